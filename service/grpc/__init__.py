"""The Open Inference Protocol V2 over gRPC, served inside every API-server process beside HTTP.

Nothing here imports grpc at package import: the main process only reads :mod:`.endpoint`, and grpc
is first loaded after the API servers are forked (gRPC's threads and state do not survive a fork).
"""
