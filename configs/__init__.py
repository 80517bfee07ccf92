"""One file per setting, each built from the named blocks of `configs/common.py`."""
