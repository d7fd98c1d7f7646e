"""Generated protobuf modules (see README.md in this folder to regenerate)."""
