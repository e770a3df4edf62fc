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
    install_requires=[
        "tensorflow>=2.16",
        "tensorboard>=2.16",
        "numpy",
        "protobuf",
    ],
    extras_require={
        "test": ["pytest", "playwright", "tf-keras", "ruff==0.17.6"],
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
