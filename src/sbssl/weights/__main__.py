"""python -m sbssl.weights export ENCODER.safetensors | localiser ROOT[,ROOT] [EPOCHS]"""

import sys

from sbssl.weights import _main

_main(sys.argv[1:])
