"""Infrastructure: files on any storage, checkpoints with integrity checks, the workdir lease,
the metric writer, progress lines, multi-host helpers, the device mesh and console logs.

The bottom layer: imports nothing else of the package. Each module loads only
the libraries it needs (`progress` no tensorboardX, `files` only etils), so
import the module you use. docs/architecture.md.
"""
