"""The wire contract's ``.proto`` files, shipped inside the package for clients in other languages:
``importlib.resources.files("gradserve.proto")`` is protoc's include root (``gradserve/v1/*.proto`` under it)."""
