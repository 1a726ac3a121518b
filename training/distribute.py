"""Training on several devices with `tf.distribute`: the strategy, and the scaling rule.

`TrainConfig.strategy` picks one:

- `default`: TensorFlow's default strategy, one device (what runs without the flag).
- `mirrored`: `tf.distribute.MirroredStrategy`, one replica per local GPU (all of
  them; without a GPU, one replica on the CPU). Tests pass explicit devices.
- `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, one process per
  machine; the cluster and this process's place in it come from `TF_CONFIG`.

Scaling rule (the linear scaling rule of Goyal et al. 2017, "Accurate, Large
Minibatch SGD"): `batch_size` is the batch of ONE replica, so each step sees a
global batch of `batch_size x replicas`; with `scale_learning_rate` (the default)
`optimizer.learning_rate` and `fine_tune_learning_rate` are multiplied by the
replicas too, so that one epoch moves the weights about as far as on one device
with fewer, smaller steps. With one replica (the default strategy) nothing changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import tensorflow as tf

from training.config import StrategyName, TrainConfig

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def make_strategy(name: str, devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy called `name`.

    `devices` (mirrored only) replaces "all local GPUs", e.g. two logical CPUs in
    tests: MirroredStrategy only picks GPUs by itself. multi_worker must be made
    before TensorFlow runs anything (it configures collective ops at start-up).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if name == "multi_worker":
        read_tf_config()  # a clear error here rather than a gRPC one later
        return tf.distribute.MultiWorkerMirroredStrategy()
    choices = ", ".join(repr(choice) for choice in get_args(StrategyName))
    raise ValueError(
        f"Invalid value for `strategy`: expected one of {choices}, received strategy={name!r}"
    )


def _tf_config_error(problem: str) -> ValueError:
    """The error for a missing or malformed TF_CONFIG, with an example to copy."""
    return ValueError(
        f"Invalid value for `strategy`: multi_worker needs TF_CONFIG {problem}. "
        f"Set it on every worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' "
        "(same cluster everywhere, this worker's own index), or use --strategy mirrored"
    )


def read_tf_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`TF_CONFIG` parsed and checked: a `cluster` of host:port lists and this `task`."""
    text = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
    if not text:
        raise _tf_config_error("in the environment, and it is not set")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise _tf_config_error(f"to be JSON ({error.msg}), received {text!r}") from None
    cluster = value.get("cluster") if isinstance(value, dict) else None
    task = value.get("task") if isinstance(value, dict) else None
    if (
        not isinstance(cluster, dict)
        or not cluster
        or not all(isinstance(hosts, list) and hosts for hosts in cluster.values())
    ):
        raise _tf_config_error(f'with a "cluster" of host:port lists, received {text!r}')
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise _tf_config_error(f'with a "task" whose "type" is in the cluster, received {text!r}')
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise _tf_config_error(f'with a "task" "index" within its list, received {text!r}')
    return value


def scale_for_replicas(config: TrainConfig, replicas: int) -> TrainConfig:
    """The config one training run uses with `replicas` replicas in sync.

    Global batch = `batch_size x replicas`; learning rates x replicas when
    `scale_learning_rate` (linear scaling rule, see the module docstring).
    The saved config stays the user's: this copy only drives the fit.
    """
    if replicas < 1:
        raise ValueError(f"Invalid value for `replicas`: expected >= 1, received {replicas}")
    if replicas == 1:
        return config
    rate = replicas if config.scale_learning_rate else 1
    optimizer = config.optimizer.model_copy(
        update={"learning_rate": config.optimizer.learning_rate * rate}
    )
    return config.model_copy(
        update={
            "batch_size": config.batch_size * replicas,
            "optimizer": optimizer,
            "fine_tune_learning_rate": config.fine_tune_learning_rate * rate,
        }
    )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes shared results (export): always, except on
    multi_worker, where only the chief does (or worker 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief
