"""``python -m tb_bn_plugin.cli``: the ``tb-bn`` command."""

import sys

from tb_bn_plugin.cli import main

sys.exit(main())
