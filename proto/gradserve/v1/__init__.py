"""Generated protobuf and gRPC code for the gradserve.v1 wire format (see tools/gen_proto.py)."""
