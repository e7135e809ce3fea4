"""Triton's model-repository methods over gRPC: ``RepositoryIndex``, ``RepositoryModelLoad``,
``RepositoryModelUnload`` of ``inference.GRPCInferenceService``, with Triton's messages
(:mod:`service.grpc.proto.triton_repository_pb2`), so ``tritonclient.grpc`` works unmodified.

They answer what the HTTP routes answer (:mod:`service.http.repository_routes`: the same index, the same
control call to the main process, the same admin-key rule), with errors as gRPC codes:
``PERMISSION_DENIED`` for model control ``none`` or the inference key, ``UNAUTHENTICATED`` without the
admin key, ``INVALID_ARGUMENT`` for a load that fails (the serving versions keep serving).
"""

from __future__ import annotations

import grpc

from service.grpc.proto import triton_repository_pb2 as repo_pb
from service.http.errors import ClientError
from service.http.repository_routes import RepositorySettings, admin_denial, control, index_entries
from service.pool.table import TableStore
from service.worker_states import WorkerStates

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
}


class RepositoryMethods:
    """The three methods of one API-server process."""

    def __init__(self, settings: RepositorySettings, store: TableStore, states: WorkerStates) -> None:
        self.settings = settings
        self.store = store
        self.states = states

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The three methods, by name: they replace the V2 servicer's (whose load and unload take KServe's
        differently numbered messages)."""

        def method(behaviour, request_type, response_type) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        return {
            "RepositoryIndex": method(
                self.index, repo_pb.RepositoryIndexRequest, repo_pb.RepositoryIndexResponse
            ),
            "RepositoryModelLoad": method(
                self.load, repo_pb.RepositoryModelLoadRequest, repo_pb.RepositoryModelLoadResponse
            ),
            "RepositoryModelUnload": method(
                self.unload, repo_pb.RepositoryModelUnloadRequest, repo_pb.RepositoryModelUnloadResponse
            ),
        }

    async def index(
        self, request: repo_pb.RepositoryIndexRequest, context
    ) -> repo_pb.RepositoryIndexResponse:
        await self._admit_or_abort(context)
        entries = index_entries(self.store, self.states, only_ready=request.ready)
        return repo_pb.RepositoryIndexResponse(
            models=[repo_pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
        )

    async def load(
        self, request: repo_pb.RepositoryModelLoadRequest, context
    ) -> repo_pb.RepositoryModelLoadResponse:
        await self._admit_or_abort(context)
        config = None
        if "config" in request.parameters:
            parameter = request.parameters["config"]
            if parameter.WhichOneof("parameter_choice") != "string_param":
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "parameters.config must be a JSON string"
                )
            config = parameter.string_param
        await self._control_or_abort("load", request.model_name, config, context)
        return repo_pb.RepositoryModelLoadResponse()

    async def unload(
        self, request: repo_pb.RepositoryModelUnloadRequest, context
    ) -> repo_pb.RepositoryModelUnloadResponse:
        await self._admit_or_abort(context)
        await self._control_or_abort("unload", request.model_name, None, context)
        return repo_pb.RepositoryModelUnloadResponse()

    async def _admit_or_abort(self, context) -> None:
        token = dict(context.invocation_metadata() or ()).get("authorization")
        scope = (
            {"headers": [(b"authorization", token.encode())]} if isinstance(token, str) else {"headers": []}
        )
        denial = admin_denial(scope, self.settings.admin_key, self.settings.api_key)
        if denial is not None:
            await context.abort(CODES.get(denial.status, grpc.StatusCode.UNAUTHENTICATED), denial.message)

    async def _control_or_abort(self, action: str, name: str, config: str | None, context) -> None:
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model_name is empty")
        try:
            await control(self.settings.model_control, action, name, config)
        except ClientError as error:
            code = CODES.get(error.status, grpc.StatusCode.INTERNAL)
            await context.abort(code, error.message)
