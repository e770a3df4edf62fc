"""tb_bn_plugin: make BatchNormalization internals visible in TensorBoard."""
