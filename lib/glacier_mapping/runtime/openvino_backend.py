"""OpenVINO runner of an exported IR (``model.openvino.xml``, CPU plugin)."""

from __future__ import annotations

import numpy as np
import openvino

from glacier_mapping.runtime.artifacts import ExportedModel
from glacier_mapping.runtime.backends import ExportedRunner

#: OpenVINO's ``INFERENCE_PRECISION_HINT`` per precision (int8 models carry their own
#: quantised operations and run the rest in float32). Set always: OpenVINO's default is
#: bfloat16 on CPUs that have it.
_PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}


class OpenVinoRunner(ExportedRunner):
    """Runs an OpenVINO IR compiled for a fixed number of windows per call.

    Static shapes let the CPU plugin plan its memory and kernels once; a model is compiled for
    each piece size met (the full piece and a batch's remainder).
    """

    backend = "openvino"
    windows_per_call = 1

    def __init__(self, exported: ExportedModel, precision: str) -> None:
        super().__init__(exported, precision)
        self._core = openvino.Core()
        self._model = self._core.read_model(str(exported.path))
        self._config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision],
                        "PERFORMANCE_HINT": "LATENCY"}
        self._requests: dict[int, openvino.InferRequest] = {}

    def _request(self, count: int) -> openvino.InferRequest:
        """The inference request of a model compiled for ``count`` windows."""
        request = self._requests.get(count)
        if request is None:
            self._model.reshape({name: [count, *shape] for name, shape in self.inputs.items()})
            compiled = self._core.compile_model(self._model, "CPU", self._config)
            request = self._requests[count] = compiled.create_infer_request()
        return request

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """float32 probabilities of the windows."""
        count = next(iter(inputs.values())).shape[0]
        request = self._request(count)
        request.infer(inputs)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)
