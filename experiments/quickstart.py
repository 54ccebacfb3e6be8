"""RBD in a ten-line optax loop: an FC network on MNIST (README's example).

Uses the full MNIST when it can find it (see random_bases.data),
else the 2,000-image sample shipped with the package.

  python experiments/quickstart.py
"""

import jax
import jax.numpy as jnp
import optax

import random_bases as rb
from random_bases import data as data_lib
from random_bases import models

data = data_lib.load_dataset("mnist", holdout="none")
x, y = jnp.asarray(data.train_images, jnp.float32) / 255.0, jnp.asarray(data.train_labels)
x_test, y_test = (jnp.asarray(a) for a in data.eval_splits["test"])
model = models.create_model("fc")
params = models.init_variables(model, key=jax.random.key(0), input_shape=(28, 28, 1))["params"]


def loss_fn(params, images, labels):
  logits = model.apply({"params": params}, images, train=False)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


tx = rb.rbd(learning_rate=16.0, d=50, seed=0)  # random bases descent
state = tx.init(params)


@jax.jit
def train_step(params, state, step):
  batch = jax.random.randint(jax.random.fold_in(jax.random.key(1), step), (32,), 0, len(x))
  loss, grads = jax.value_and_grad(loss_fn)(params, x[batch], y[batch])
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state, loss


for step in range(1000):
  params, state, loss = train_step(params, state, step)
  if step % 200 == 0:
    print(f"step {step:4d}  train loss {loss:.3f}")
accuracy = jnp.mean(
  model.apply({"params": params}, x_test / 255.0, train=False).argmax(-1) == y_test
)
print(f"test accuracy after 1000 steps of RBD (d=50): {accuracy:.3f} on {data.source}")
