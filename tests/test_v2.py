"""Open Inference Protocol v2 routes: real tritonclient over a socket, and plain JSON callers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelworks.api.services import Services
from modelworks.client import Client
from tests.conftest import LiveServer
from tests.models import linear_onnx, linear_reference

X = np.arange(8, dtype=np.float32).reshape(2, 4)
SIGNATURE_INPUTS = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
SIGNATURE_OUTPUTS = [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]


def push(client: Client, tmp_path: Path, name: str, seed: int = 0) -> dict[str, Any]:
    """Create `name` if needed and push a linear model built with `seed` as its next version."""
    if name not in {m["name"] for m in client.list_models()}:
        client.create_model(name)
    version: dict[str, Any] = client.push(
        name, linear_onnx(tmp_path / f"{name}-{seed}.onnx", seed=seed)
    )
    return version


def x_input(
    data: Any = None, shape: list[int] | None = None, datatype: str = "FP32", name: str = "x"
) -> dict[str, Any]:
    return {
        "name": name,
        "shape": [2, 4] if shape is None else shape,
        "datatype": datatype,
        "data": X.reshape(-1).tolist() if data is None else data,
    }


def infer(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    return http.post(f"/v2/models/{path}/infer", json=body)


def output_y(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    outs = {o["name"]: o for o in resp.json()["outputs"]}
    y = outs["y"]
    assert y["datatype"] == "FP32"
    return np.asarray(y["data"], dtype=np.float32).reshape(y["shape"])


def assert_error(resp: httpx.Response, status: int | tuple[int, ...]) -> str:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    message: str = body["error"]
    return message


# tritonclient -------------------------------------------------------------------------------
@pytest.mark.socket
def test_tritonclient_end_to_end(
    live_server: LiveServer, client: Client, admin_key: str, tmp_path: Path
) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    push(client, tmp_path, "press-line")
    headers = {"Authorization": f"Bearer {admin_key}"}
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{live_server.port}")
    try:
        assert c.is_server_live(headers=headers) is True
        assert c.is_server_ready(headers=headers) is True

        server_md = c.get_server_metadata(headers=headers)
        assert server_md["name"] == "modelworks"
        assert isinstance(server_md["version"], str) and server_md["version"]
        assert isinstance(server_md["extensions"], list)

        assert c.is_model_ready("press-line", headers=headers) is True
        assert c.is_model_ready("press-line", "1", headers=headers) is True

        model_md = c.get_model_metadata("press-line", headers=headers)
        assert model_md["name"] == "press-line"
        assert model_md["versions"] == ["1"]
        assert model_md["inputs"] == SIGNATURE_INPUTS
        assert model_md["outputs"] == SIGNATURE_OUTPUTS
        assert (
            c.get_model_metadata("press-line", "1", headers=headers)["inputs"] == SIGNATURE_INPUTS
        )

        inp = httpclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=False)
        out = httpclient.InferRequestedOutput("y", binary_data=False)
        result = c.infer(
            "press-line", [inp], outputs=[out], request_id="42", model_version="1", headers=headers
        )
        response = result.get_response()
        assert response["id"] == "42"
        assert response["model_name"] == "press-line"
        assert response["model_version"] == "1"
        y = result.as_numpy("y")
        assert y is not None
        assert y.shape == (2, 2)
        np.testing.assert_allclose(y, linear_reference(X), rtol=1e-5, atol=1e-6)

        # without a version: the latest (only) version serves
        result = c.infer("press-line", [inp], outputs=[out], headers=headers)
        np.testing.assert_allclose(result.as_numpy("y"), linear_reference(X), rtol=1e-5, atol=1e-6)

        with pytest.raises(InferenceServerException) as info:
            c.infer("missing", [inp], outputs=[out], headers=headers)
        status = info.value.status()
        assert status is not None and status != "200"
        assert status == "404"
        message = info.value.message()
        assert isinstance(message, str)
        assert "missing" in message
        assert "exception occurred in the client" not in message

        # a model that does not exist is also not ready
        assert c.is_model_ready("missing", headers=headers) is False
    finally:
        c.close()


@pytest.mark.socket
def test_tritonclient_default_binary_path(
    live_server: LiveServer, client: Client, admin_key: str, tmp_path: Path
) -> None:
    """tritonclient's defaults (binary input, binary outputs) work when the server advertises
    the binary tensor extension; when it does not, the error says how to send JSON."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    push(client, tmp_path, "press-line")
    headers = {"Authorization": f"Bearer {admin_key}"}
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{live_server.port}")
    try:
        extensions = c.get_server_metadata(headers=headers)["extensions"]
        inp = httpclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)  # binary_data=True is the default
        if "binary_tensor_data" in extensions:
            result = c.infer("press-line", [inp], headers=headers)
            np.testing.assert_allclose(
                result.as_numpy("y"), linear_reference(X), rtol=1e-5, atol=1e-6
            )
            result = c.infer(
                "press-line", [inp], outputs=[httpclient.InferRequestedOutput("y")], headers=headers
            )
            np.testing.assert_allclose(
                result.as_numpy("y"), linear_reference(X), rtol=1e-5, atol=1e-6
            )
        else:
            with pytest.raises(InferenceServerException) as info:
                c.infer("press-line", [inp], headers=headers)
            assert info.value.status() == "400"
            assert "binary_data=False" in (info.value.message() or "")
    finally:
        c.close()


# JSON callers ------------------------------------------------------------------------------
def test_nested_and_flat_data(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press-line")
    flat = infer(http, "press-line", {"inputs": [x_input(X.reshape(-1).tolist())]})
    nested = infer(http, "press-line", {"inputs": [x_input(X.tolist())]})
    np.testing.assert_allclose(output_y(flat), linear_reference(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(output_y(nested), linear_reference(X), rtol=1e-5, atol=1e-6)
    assert flat.json()["model_name"] == "press-line"
    assert flat.json()["model_version"] == "1"
    assert flat.headers["content-type"] == "application/json"


def test_request_id_is_echoed(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press-line")
    resp = infer(http, "press-line", {"id": "req-7", "inputs": [x_input()]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "req-7"
    # no id asked: none invented that the caller could mistake for theirs
    resp = infer(http, "press-line", {"inputs": [x_input()]})
    assert resp.status_code == 200
    assert "id" not in resp.json() or resp.json()["id"] == ""


def test_outputs_subset_and_unknown_output(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    push(client, tmp_path, "press-line")
    resp = infer(http, "press-line", {"inputs": [x_input()], "outputs": [{"name": "y"}]})
    assert [o["name"] for o in resp.json()["outputs"]] == ["y"]
    np.testing.assert_allclose(output_y(resp), linear_reference(X), rtol=1e-5, atol=1e-6)

    resp = infer(http, "press-line", {"inputs": [x_input()], "outputs": [{"name": "logits"}]})
    message = assert_error(resp, 400)
    assert "logits" in message
    assert "y" in message  # tells which outputs exist


# aliases and versions ------------------------------------------------------------------------
def test_alias_rules(http: httpx.Client, client: Client, tmp_path: Path, database_url: str) -> None:
    assert push(client, tmp_path, "press-line", seed=1)["version"] == 1
    assert push(client, tmp_path, "press-line", seed=2)["version"] == 2
    body = {"inputs": [x_input()]}

    def served(path: str) -> tuple[str, np.ndarray]:
        resp = infer(http, path, body)
        return resp.json().get("model_version"), output_y(resp)

    def check(path: str, version: int) -> None:
        got_version, y = served(path)
        assert got_version == str(version), path
        np.testing.assert_allclose(
            y, linear_reference(X, seed=version), rtol=1e-5, atol=1e-6, err_msg=path
        )

    # no alias: the latest version serves
    check("press-line", 2)
    assert http.get("/v2/models/press-line").json()["versions"] == ["1", "2"]

    client.set_alias("press-line", "production", 1)
    check("press-line", 1)
    check("press-line:2", 2)
    check("press-line:1", 1)
    check("press-line:production", 1)
    check("press-line/versions/1", 1)
    check("press-line/versions/2", 2)

    client.set_alias("press-line", "staging", 2)
    check("press-line:staging", 2)
    check("press-line/versions/staging", 2)
    check("press-line", 1)  # staging does not move the default

    # the other OIP routes resolve the same way
    assert http.get("/v2/models/press-line:staging/ready").json() == {
        "name": "press-line",
        "ready": True,
    }
    assert http.get("/v2/models/press-line/versions/1/ready").status_code == 200

    for path in (
        "press-line:9",
        "press-line/versions/9",
        "press-line:canary",
        "press-line/versions/canary",
        "no-such-model",
        "no-such-model:1",
    ):
        message = assert_error(infer(http, path, body), 404)
        assert message, path
    assert "9" in assert_error(infer(http, "press-line:9", body), 404)
    assert "canary" in assert_error(infer(http, "press-line:canary", body), 404)
    assert "no-such-model" in assert_error(infer(http, "no-such-model", body), 404)
    for path in (
        "/v2/models/press-line:9",
        "/v2/models/press-line:9/ready",
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/press-line/versions/canary",
    ):
        assert_error(http.get(path), 404)

    # removing the production alias brings back "latest"
    client.delete_alias("press-line", "production")
    check("press-line", 2)


# bad input ---------------------------------------------------------------------------------
SIGNATURE_TEXT = "x: FP32 [-1, 4]"


@pytest.mark.parametrize(
    ("inputs", "must_name"),
    [
        pytest.param(
            [x_input(np.zeros((2, 3)).tolist(), shape=[2, 3])], ["'x'", "[2, 3]"], id="wrong-shape"
        ),
        pytest.param(
            [x_input([[1, 2, 3, 4]], shape=[1, 4], datatype="INT64")],
            ["'x'", "INT64"],
            id="wrong-datatype",
        ),
        pytest.param([x_input(name="features")], ["'features'"], id="unknown-input"),
        pytest.param([x_input(), x_input(name="extra")], ["'extra'"], id="extra-input"),
    ],
)
def test_signature_mismatch_names_input_and_signature(
    http: httpx.Client,
    client: Client,
    tmp_path: Path,
    inputs: list[dict[str, Any]],
    must_name: list[str],
) -> None:
    push(client, tmp_path, "press-line")
    message = assert_error(infer(http, "press-line", {"inputs": inputs}), 400)
    for fragment in must_name:
        assert fragment in message, message
    assert SIGNATURE_TEXT in message, message


def test_missing_input_names_the_signature(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    """A two-input model called with one input says which one is missing and what it expects."""
    import onnx
    from onnx import TensorProto, helper

    path = tmp_path / "add.onnx"
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    client.create_model("adder")
    client.push("adder", path)

    ok = infer(http, "adder", {"inputs": [x_input(name="a"), x_input(name="b")]})
    np.testing.assert_allclose(output_y(ok).reshape(2, 4), 2 * X)

    message = assert_error(infer(http, "adder", {"inputs": [x_input(name="a")]}), 400)
    assert "'b'" in message and "missing" in message, message
    assert "a: FP32 [-1, 4]" in message and "b: FP32 [-1, 4]" in message, message


def test_shape_and_data_count_mismatch(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press-line")
    message = assert_error(
        infer(http, "press-line", {"inputs": [x_input([1.0, 2.0, 3.0], shape=[1, 4])]}), 400
    )
    assert "'x'" in message
    assert "4" in message and "3" in message, message


def test_nan_token_is_refused(http: httpx.Client, client: Client, tmp_path: Path) -> None:
    push(client, tmp_path, "press-line")
    raw = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1.0,NaN,3.0,4.0]}]}'
    resp = http.post(
        "/v2/models/press-line/infer", content=raw, headers={"Content-Type": "application/json"}
    )
    message = assert_error(resp, 400)
    assert "NaN" in message
    raw_inf = raw.replace(b"NaN", b"Infinity")
    assert "Infinity" in assert_error(
        http.post("/v2/models/press-line/infer", content=raw_inf), 400
    )


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"this is not json", id="not-json"),
        pytest.param(b'{"inputs": [', id="truncated-json"),
        pytest.param(b'{"inputs": []}', id="empty-inputs"),
        pytest.param(b"{}", id="no-inputs"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b'{"inputs": [42]}', id="input-not-an-object"),
    ],
)
def test_malformed_body_is_400(
    http: httpx.Client, client: Client, tmp_path: Path, raw: bytes
) -> None:
    push(client, tmp_path, "press-line")
    resp = http.post(
        "/v2/models/press-line/infer", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 400)


def test_huge_declared_shape_is_refused_and_server_survives(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    push(client, tmp_path, "press-line")
    for shape in ([2**40, 2**40], [2**63, 2**63, 4], [0, 2**62, 2**62]):
        resp = infer(http, "press-line", {"inputs": [x_input([1.0, 2.0, 3.0, 4.0], shape=shape)]})
        message = assert_error(resp, (400, 413))
        assert "'x'" in message, message
    ok = infer(http, "press-line", {"inputs": [x_input()]})
    np.testing.assert_allclose(output_y(ok), linear_reference(X), rtol=1e-5, atol=1e-6)
    assert http.get("/v2/health/ready").status_code == 200


# auth --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/livez", "/readyz"])
def test_health_needs_no_key(anon: httpx.Client, path: str) -> None:
    resp = anon.get(path)
    assert resp.status_code == 200, resp.text


def test_health_bodies(anon: httpx.Client) -> None:
    assert anon.get("/v2/health/live").json() == {"live": True}
    assert anon.get("/v2/health/ready").json() == {"ready": True}


def test_protocol_routes_need_a_key(
    anon: httpx.Client, http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    push(client, tmp_path, "press-line")
    calls = [
        ("GET", "/v2", None),
        ("GET", "/v2/models/press-line", None),
        ("GET", "/v2/models/press-line/versions/1", None),
        ("GET", "/v2/models/press-line/ready", None),
        ("POST", "/v2/models/press-line/infer", {"inputs": [x_input()]}),
        ("POST", "/v2/models/press-line/versions/1/infer", {"inputs": [x_input()]}),
    ]
    for method, path, body in calls:
        resp = anon.request(method, path, json=body)
        message = assert_error(resp, 401)
        assert "Bearer" in message, (path, message)
        resp = anon.request(
            method, path, json=body, headers={"Authorization": "Bearer mw_not-a-key"}
        )
        assert_error(resp, 401)
        # the same call with the admin key works
        assert http.request(method, path, json=body).status_code == 200, path


# a broken artifact ---------------------------------------------------------------------------
def test_corrupt_artifact_is_not_ready_while_others_serve(
    http: httpx.Client, client: Client, services: Services, tmp_path: Path
) -> None:
    broken = push(client, tmp_path, "broken", seed=3)
    healthy = push(client, tmp_path, "healthy", seed=4)
    assert broken["digest"] != healthy["digest"]
    hexdigest = broken["digest"].removeprefix("sha256:")
    blob = services.store.root / "blobs" / "sha256" / hexdigest[:2] / hexdigest[2:]
    assert blob.is_file()
    blob.write_bytes(b"\x00garbage, not the uploaded model" * 8)

    resp = http.get("/v2/models/broken/ready")
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["ready"] is False
    assert body["name"] == "broken"
    assert isinstance(body["error"], str) and body["error"]
    assert str(services.store.root) not in body["error"]  # no server paths leak

    message = assert_error(infer(http, "broken", {"inputs": [x_input()]}), 503)
    assert str(services.store.root) not in message

    assert http.get("/v2/models/healthy/ready").json() == {"name": "healthy", "ready": True}
    ok = infer(http, "healthy", {"inputs": [x_input()]})
    np.testing.assert_allclose(output_y(ok), linear_reference(X, seed=4), rtol=1e-5, atol=1e-6)

    # still not ready on a second look (the failure is not cached as success)
    assert http.get("/v2/models/broken/ready").status_code == 503
    assert json.loads(http.get("/v2/health/ready").content) == {"ready": True}


# selectors and values the server must refuse cleanly (never a 500) ---------------------------
@pytest.mark.parametrize(
    "path",
    [
        pytest.param("press-line:%C2%B2", id="superscript-two-selector"),  # "²".isdigit() is True
        pytest.param("press-line/versions/%C2%B2", id="superscript-two-version"),
        pytest.param("press-line:99999999999999999999", id="version-beyond-64-bit"),
        pytest.param("press-line/versions/99999999999999999999", id="path-version-beyond-64-bit"),
    ],
)
def test_odd_version_selectors_are_not_found(
    http: httpx.Client, client: Client, tmp_path: Path, database_url: str, path: str
) -> None:
    push(client, tmp_path, "press-line")
    resp = infer(http, path, {"inputs": [x_input()]})
    assert_error(resp, 404)
    assert_error(http.get(f"/v2/models/{path}"), 404)


def test_version_in_name_and_path_is_400(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    push(client, tmp_path, "press-line")
    assert_error(infer(http, "press-line:1/versions/1", {"inputs": [x_input()]}), 400)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"1e400", id="json-overflows-float64"),  # json.loads gives inf, no NaN token
        pytest.param(b"1e39", id="overflows-fp32"),
        pytest.param(b"-1e39", id="overflows-fp32-negative"),
    ],
)
def test_non_finite_input_values_are_400(
    http: httpx.Client, client: Client, tmp_path: Path, value: bytes
) -> None:
    push(client, tmp_path, "press-line")
    raw = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[' + value + b",1,2,3]}]}"
    message = assert_error(http.post("/v2/models/press-line/infer", content=raw), 400)
    assert "'x'" in message, message


def test_non_finite_output_is_not_an_internal_error(
    http: httpx.Client, client: Client, tmp_path: Path
) -> None:
    """Finite FP32 inputs whose result overflows: the caller gets an answer, not a 500."""
    push(client, tmp_path, "press-line")
    big = 3.0e38
    resp = infer(http, "press-line", {"inputs": [x_input([big] * 4, shape=[1, 4])]})
    assert resp.status_code != 500, resp.text
    if resp.status_code != 200:
        assert_error(resp, (400, 422))
