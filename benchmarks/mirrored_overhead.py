"""Training overhead of BatchNormCallback under MirroredStrategy, 2 logical CPUs (ResNet-20).

Configurations ``bare`` (no logging callback) and ``bn_default``
(``BatchNormCallback`` with its defaults), each with its own identically built
model under one ``MirroredStrategy`` over 2 logical CPU devices, timed
epoch by epoch in alternation exactly as ``training_overhead.py`` does (same
model, data and window; ``training_overhead.measure``). The global batch is
split evenly over the 2 replicas; the BN layers are unsynchronised, so the
callback also records every replica's batch statistics.

Run: ``python benchmarks/mirrored_overhead.py [--quick | --smoke] [--out PATH]``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.quiet_tensorflow()

import tensorflow as tf  # noqa: E402

# Logical devices must exist before TensorFlow initialises the CPU.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import training_overhead  # noqa: E402

from tb_bn_plugin import BatchNormCallback  # noqa: E402

MODES = {
    # global batch (split over 2 replicas), steps per epoch K (the default log cadence 50), rounds
    "full": dict(steps=50, rounds=4, batch=64, blocks=3, width=16),
    "quick": dict(steps=50, rounds=3, batch=32, blocks=3, width=16),
    "smoke": dict(steps=4, rounds=2, batch=8, blocks=1, width=4, image=16),
}


def main(argv=None) -> int:
    started = time.perf_counter()
    args = harness.parse_args("mirrored_overhead", __doc__.splitlines()[0], argv)
    p = MODES[args.mode]
    image = p.get("image", 32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(
        f"mode={args.mode} steps/epoch={p['steps']} rounds={p['rounds']} global batch={p['batch']} "
        f"replicas={strategy.num_replicas_in_sync}"
    )
    result = training_overhead.measure(
        {"bare": lambda d: [], "bn_default": lambda d: [BatchNormCallback(d)]},
        p,
        image,
        strategy.scope,
    )
    harness.write_json(
        args,
        {
            "params": {
                **p,
                "image": image,
                "model": f"ResNet-{6 * p['blocks'] + 2}",
                "bn_layers": result["bn_layers"],
                "replicas": strategy.num_replicas_in_sync,
                "per_replica_batch": p["batch"] // 2,
                "strategy": "MirroredStrategy over 2 logical CPU devices",
                "window": training_overhead.WINDOW,
            },
            "callback_signature_defaults": training_overhead.callback_defaults(),
            "targets": {"bn_default": training_overhead.TARGETS["bn_default"]},
            "configs": result["configs"],
        },
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
