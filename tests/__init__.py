# First of the suite to run in every test process: whatever it imports later is compiled once
# and cached, even under PYTHONDONTWRITEBYTECODE (see tests/support/bytecode.py).
from tests.support.bytecode import cache_bytecode_outside_the_tree

cache_bytecode_outside_the_tree()
