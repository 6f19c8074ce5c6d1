"""The wire contract and the Python code around it. The ``.proto`` files ship inside the package for clients in
other languages: ``importlib.resources.files("gradserve.proto")`` is protoc's include root (``gradserve/v1/*.proto``
under it). ``gradserve.proto.codec`` converts the messages; the generated ``gradserve.v1`` lives in ``gradserve/v1/``
here, beside the files it comes from."""
