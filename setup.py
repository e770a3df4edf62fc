"""Packaging for tb_bn_plugin: a Keras callback and a TensorBoard plugin for BatchNorm internals."""

from setuptools import find_namespace_packages, setup

setup(
    name="tb_bn_plugin",
    version="0.1.0",
    description="Make BatchNormalization internals visible in TensorBoard: "
    "batch vs moving statistics, train/inference gap, diagnostics, switch paths.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Namespace discovery includes the data-only folder plugin/static (the built frontend)
    # as a package, so setuptools ships it without warning that it is not configured.
    packages=find_namespace_packages(include=["tb_bn_plugin", "tb_bn_plugin.*"]),
    package_data={"tb_bn_plugin.plugin.static": ["*"]},
    # TensorFlow is an extra: Keras 3 on JAX or PyTorch logs, and the BN Internals tab,
    # read_stats and tb-bn report work, without it (event files are written with
    # TensorBoard's own writer). The TensorFlow backend, tf-keras, tf.distribute, the graph
    # view and tb-bn graph need it: pip install "tb_bn_plugin[tensorflow]".
    install_requires=[
        "keras>=3.0",
        "tensorboard>=2.16",
        "numpy",
        "protobuf",
    ],
    extras_require={
        "tensorflow": ["tensorflow>=2.16"],
        "jax": ["jax"],
        "torch": ["torch"],
        # tests/run.sh installs jax and the CPU build of torch itself (see there).
        "test": ["tensorflow>=2.16", "pytest", "playwright", "tf-keras", "ruff==0.17.6"],
    },
    entry_points={
        "tensorboard_plugins": [
            "bn_internals = tb_bn_plugin.plugin.loader:BNInternalsLoader",
        ],
        "console_scripts": [
            "tb-bn = tb_bn_plugin.cli:main",
        ],
    },
)
