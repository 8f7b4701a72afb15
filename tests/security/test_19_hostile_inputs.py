"""SECURITY.md classes 3 and 9: hostile protocol inputs.

Every JSON body, on every route, is UTF-8 text whose strings and keys are valid Unicode (a lone
surrogate such as "\\ud800" is valid JSON but no text: it once reached the database and became a
500) and whose objects name each key once (parsers disagree on which of two equal keys wins).
A tensor holds at least one element. A version is written one way only: `int()` also reads
'01', '+1', ' 1' or a full-width '1' as 1. Each refusal is a 400 or 404 that says what is wrong
(and where), never a 500, and the server still answers after it.

The bodies are written by hand (httpx and the SDKs refuse to encode a lone surrogate, and a
dict cannot hold a key twice). One module-scoped server on a real socket, so the real OpenAI and
Hugging Face clients can call it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.conftest import LiveServer
from tests.models import echo_strings, linear_onnx
from tests.security.test_20_answer_budget import wide_embeddings_onnx

pytestmark = pytest.mark.socket

GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
JSON = {"Content-Type": "application/json"}


@dataclass
class Server:
    url: str
    key: str
    http: httpx.Client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`m` (linear, versions 1 and 2), `echo` (BYTES) and `emb` (an embeddings model)."""
    folder = tmp_path_factory.mktemp("hostile-inputs")
    settings = Settings(home=folder / "home")
    settings.home.mkdir()
    upgrade(settings.resolved_database_url)
    services = Services.build(settings)
    key = services.keys.bootstrap_admin()
    assert key is not None
    uploads = [
        ("m", "tensor", linear_onnx(folder / "m1.onnx")),
        ("m", "tensor", linear_onnx(folder / "m2.onnx", seed=1)),
        ("echo", "tensor", echo_strings(folder / "echo.onnx")),
        ("emb", "embeddings", wide_embeddings_onnx(folder / "emb.onnx", dims=4)),
    ]
    try:
        with (
            LiveServer(create_app(settings, services)) as live,
            httpx.Client(
                base_url=live.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as http,
        ):
            for name, task, path in uploads:
                http.post("/api/v1/models", json={"name": name, "task": task})
                files = {"file": (path.name, path.read_bytes())}
                r = http.post(f"/api/v1/models/{name}/versions", files=files)
                assert r.status_code == 201, r.text
            yield Server(live.url, key, http)
    finally:
        services.close()


def message(r: httpx.Response) -> str:
    error = r.json()["error"]
    return str(error if isinstance(error, str) else error["message"])


def assert_still_serving(server: Server) -> None:
    r = server.http.post("/v2/models/m/infer", json=GOOD)
    assert r.status_code == 200, r.text
    assert server.http.get("/livez").status_code == 200


def model_names(server: Server) -> set[str]:
    r = server.http.get("/api/v1/models")
    assert r.status_code == 200, r.text
    return {m["name"] for m in r.json()}


# lone surrogates ----------------------------------------------------------------------------------
LONE_SURROGATES: dict[str, tuple[str, str, str]] = {
    # case: (route, JSON text as sent, where the error says the surrogate is)
    "openai-input": ("/v1/embeddings", '{"model":"emb","input":"\\ud800"}', "input"),
    "openai-input-list": (
        "/v1/embeddings",
        '{"model":"emb","input":["a","b","c","x\\udfff"]}',
        "input[3]",
    ),
    "openai-token-arrays": (
        "/v1/embeddings",
        '{"model":"emb","input":[[1,"\\ud800"]]}',
        "input[0][1]",
    ),
    "openai-model-selector": ("/v1/embeddings", '{"model":"emb:\\ud800","input":"a"}', "model"),
    "openai-model-name": ("/v1/embeddings", '{"model":"\\udc00","input":"a"}', "model"),
    "openai-encoding-format": (
        "/v1/embeddings",
        '{"model":"emb","input":"a","encoding_format":"\\ud800"}',
        "encoding_format",
    ),
    "openai-key": (
        "/v1/embeddings",
        '{"model":"emb","input":"a","\\ud800":1}',
        "a key of the body",
    ),
    "hf-inputs": ("/models/emb", '{"inputs":"\\ud800"}', "inputs"),
    "hf-inputs-list": ("/models/emb", '{"inputs":["ok","ok","\\ude00"]}', "inputs[2]"),
    "hf-parameter": (
        "/models/emb",
        '{"inputs":"a","parameters":{"candidate_labels":["x","\\ud800"]}}',
        "parameters.candidate_labels[1]",
    ),
    "hf-parameter-key": (
        "/models/emb",
        '{"inputs":"a","parameters":{"\\ud800":1}}',
        "a key of parameters",
    ),
    "oip-bytes-data": (
        "/v2/models/echo/infer",
        '{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["ok","\\udcff"]}]}',
        "inputs[0].data[1]",
    ),
    "oip-request-id": (
        "/v2/models/m/infer",
        json.dumps({**GOOD, "id": "@"}).replace("@", "\\ud800"),
        "id",
    ),
    "oip-input-name": (
        "/v2/models/m/infer",
        json.dumps(GOOD).replace('"x"', '"x\\ud800"'),
        "inputs[0].name",
    ),
    "oip-parameters": (
        "/v2/models/m/infer",
        json.dumps({**GOOD, "parameters": {"tag": "@"}}).replace("@", "\\udfff"),
        "parameters.tag",
    ),
    "oip-output-name": (
        "/v2/models/m/infer",
        json.dumps({**GOOD, "outputs": [{"name": "@"}]}).replace("@", "\\ud800"),
        "outputs[0].name",
    ),
    "oip-model-in-path-body": (
        "/v2/models/m/versions/1/infer",
        json.dumps(GOOD).replace('"FP32"', '"FP32\\ud800"'),
        "inputs[0].datatype",
    ),
    "tf-string": ("/v1/models/echo:predict", '{"instances":["ok","\\ud800"]}', "instances[1]"),
    "tf-b64": ("/v1/models/echo:predict", '{"instances":[{"b64":"\\ud800"}]}', "instances[0].b64"),
    "tf-columns": ("/v1/models/echo:predict", '{"inputs":{"s":["\\ud800"]}}', "inputs.s[0]"),
    "tf-instance-key": (
        "/v1/models/m:predict",
        '{"instances":[{"\\ud800":[1,2,3,4]}]}',
        "a key of instances[0]",
    ),
    "tf-signature-name": (
        "/v1/models/m:predict",
        '{"signature_name":"\\ud800","instances":[[1,2,3,4]]}',
        "signature_name",
    ),
    "tf-version-path": (
        "/v1/models/m/versions/1:predict",
        '{"instances":["\\udbff"]}',
        "instances[0]",
    ),
    "management-description": (
        "/api/v1/models",
        '{"name":"lone-a","description":"\\ud800"}',
        "description",
    ),
    "management-tag-key": (
        "/api/v1/models",
        '{"name":"lone-b","tags":{"\\ud800":"v"}}',
        "a key of tags",
    ),
}


@pytest.mark.parametrize("case", sorted(LONE_SURROGATES))
def test_lone_surrogates_are_a_400_naming_the_field(server: Server, case: str) -> None:
    route, text, where = LONE_SURROGATES[case]

    r = server.http.post(route, content=text.encode(), headers=JSON)

    assert r.status_code == 400, r.text
    assert message(r).startswith(f"{where} is not valid Unicode text (a lone surrogate)")
    assert "send UTF-8" in message(r)
    assert not {"lone-a", "lone-b"} & model_names(server)
    assert_still_serving(server)


def test_surrogate_pairs_are_text(server: Server) -> None:
    """An escaped pair is one character (here an emoji): valid, and served."""
    body = '{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":["\\ud83d\\ude00"]}]}'

    r = server.http.post("/v2/models/echo/infer", content=body, headers=JSON)

    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == ["\U0001f600"]


PATHS_WITH_SURROGATE_BYTES = [
    ("POST", "/v2/models/m%ED%A0%80/infer", GOOD),
    ("GET", "/v2/models/m/versions/%ED%A0%80", None),
    ("GET", "/v2/models/m:%ED%B0%80", None),
    ("GET", "/v1/models/m/labels/%ED%A0%80", None),
    ("POST", "/v1/models/m/labels/%ED%A0%80:predict", {"instances": [[1, 2, 3, 4]]}),
    ("POST", "/models/emb%ED%A0%80", {"inputs": "a"}),
    ("GET", "/api/v1/models/m%ED%A0%80", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PATHS_WITH_SURROGATE_BYTES)
def test_surrogate_bytes_in_a_path_are_a_4xx(
    server: Server, method: str, path: str, body: Any
) -> None:
    """The server decodes paths with replacement characters: they name nothing."""
    r = server.http.request(method, path, json=body)

    assert r.status_code in (400, 404, 422), r.text
    assert_still_serving(server)


NOT_UTF8: dict[str, bytes] = {
    "raw-surrogate-bytes": b'{"model":"emb","input":"\xed\xa0\x80"}',
    "latin-1": b'{"model":"emb","input":"caf\xe9"}',
    "utf-16": '{"model":"emb","input":"a"}'.encode("utf-16-le"),
    "utf-32": '{"model":"emb","input":"a"}'.encode("utf-32"),
}


@pytest.mark.parametrize("case", sorted(NOT_UTF8))
@pytest.mark.parametrize("route", ["/v1/embeddings", "/v2/models/m/infer", "/api/v1/models"])
def test_bodies_that_are_not_utf8_are_a_400(server: Server, case: str, route: str) -> None:
    r = server.http.post(route, content=NOT_UTF8[case], headers=JSON)

    assert r.status_code == 400, r.text
    assert "not UTF-8" in message(r) and "send JSON encoded as UTF-8" in message(r)
    assert_still_serving(server)


# duplicate keys -----------------------------------------------------------------------------------
INPUT = '{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}'
DUPLICATE_KEYS: dict[str, tuple[str, str, str]] = {
    # case: (route, JSON text, the key named)
    "oip-top": ("/v2/models/m/infer", f'{{"inputs":[{INPUT}],"inputs":[]}}', "inputs"),
    "oip-escaped": ("/v2/models/m/infer", f'{{"inputs":[{INPUT}],"\\u0069nputs":[]}}', "inputs"),
    "oip-in-a-tensor": (
        "/v2/models/m/infer",
        '{"inputs":[{"name":"x","name":"y","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}',
        "name",
    ),
    "oip-deep-parameters": (
        "/v2/models/m/infer",
        f'{{"inputs":[{INPUT}],"parameters":{{"a":[{{"b":1,"b":2}}]}}}}',
        "b",
    ),
    "oip-binary-header": (
        "/v2/models/m/infer",
        f'{{"inputs":[{INPUT}],"outputs":[],"outputs":[]}}',
        "outputs",
    ),
    "openai": ("/v1/embeddings", '{"model":"emb","input":"a","input":"b"}', "input"),
    "openai-model": ("/v1/embeddings", '{"model":"emb","input":"a","model":"m"}', "model"),
    "hf": ("/models/emb", '{"inputs":"a","parameters":{"top_k":1,"top_k":2}}', "top_k"),
    "tf-instances": (
        "/v1/models/m:predict",
        '{"instances":[{"x":[1,2,3,4],"x":[5,6,7,8]}]}',
        "x",
    ),
    "tf-top": (
        "/v1/models/m:predict",
        '{"instances":[[1,2,3,4]],"instances":[[5,6,7,8]]}',
        "instances",
    ),
    "management": ("/api/v1/models", '{"name":"dup-a","name":"dup-b"}', "name"),
}


@pytest.mark.parametrize("case", sorted(DUPLICATE_KEYS))
def test_a_key_given_twice_is_a_400(server: Server, case: str) -> None:
    route, text, key = DUPLICATE_KEYS[case]

    r = server.http.post(route, content=text.encode(), headers=JSON)

    assert r.status_code == 400, r.text
    assert f"the key {key!r} appears twice" in message(r)
    assert not {"dup-a", "dup-b"} & model_names(server)
    assert_still_serving(server)


def test_a_key_given_twice_in_a_form_body_is_a_400(server: Server) -> None:
    """What `curl -d` sends (a form type) is read as JSON on the management API: the same."""
    r = server.http.post(
        "/api/v1/models",
        content=b'{"name":"dup-c","name":"dup-d"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert r.status_code == 400, r.text
    assert "the key 'name' appears twice" in message(r)
    assert not {"dup-c", "dup-d"} & model_names(server)


# tensors without elements -------------------------------------------------------------------------
def oip(shape: list[int], data: list[Any], datatype: str = "FP32", name: str = "x") -> Any:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


EMPTY_TENSORS: dict[str, tuple[str, Any]] = {
    "oip-0x4": ("/v2/models/m/infer", oip([0, 4], [])),
    "oip-4x0": ("/v2/models/m/infer", oip([4, 0], [])),
    "oip-0": ("/v2/models/m/infer", oip([0], [])),
    "oip-0x4-nested": ("/v2/models/m/infer", oip([0, 4], [[]])),
    "oip-bytes-0": ("/v2/models/echo/infer", oip([0], [], "BYTES", "s")),
    "oip-huge-times-0": ("/v2/models/m/infer", oip([0, 2**40], [])),
    "tf-inputs-empty-list": ("/v1/models/m:predict", {"inputs": []}),
    "tf-inputs-named-empty": ("/v1/models/m:predict", {"inputs": {"x": []}}),
    "tf-instances-empty-rows": ("/v1/models/m:predict", {"instances": [[], []]}),
    "tf-strings-empty": ("/v1/models/echo:predict", {"inputs": {"s": []}}),
}


@pytest.mark.parametrize("case", sorted(EMPTY_TENSORS))
def test_a_tensor_without_elements_is_a_400(server: Server, case: str) -> None:
    route, body = EMPTY_TENSORS[case]

    r = server.http.post(route, json=body)

    assert r.status_code == 400, r.text
    assert "has no elements" in message(r) and "send at least one row" in message(r)
    assert_still_serving(server)


def test_a_binary_tensor_without_elements_is_a_400(server: Server) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [0, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()

    r = server.http.post(
        "/v2/models/m/infer",
        content=head,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
    )

    assert r.status_code == 400, r.text
    assert "input 'x' has no elements (shape [0, 4])" in message(r)
    assert_still_serving(server)


# version selectors --------------------------------------------------------------------------------
# each is version 1 to int(), float() or str.isdigit(); none may name version 1 here
SELECTORS = ["01", "001", "1.0", "+1", " 1", "1 ", "1e0", "\uff11", "-1", "0x1", "1_0", "\u0663"]


def version_routes(selector: str) -> dict[str, tuple[str, str, Any]]:
    quoted = quote(selector, safe="")
    return {
        "oip-metadata-path": ("GET", f"/v2/models/m/versions/{quoted}", None),
        "oip-metadata-name": ("GET", f"/v2/models/m:{quoted}", None),
        "oip-infer-path": ("POST", f"/v2/models/m/versions/{quoted}/infer", GOOD),
        "oip-infer-name": ("POST", f"/v2/models/m:{quoted}/infer", GOOD),
        "oip-ready": ("GET", f"/v2/models/m/versions/{quoted}/ready", None),
        "tf-status": ("GET", f"/v1/models/m/versions/{quoted}", None),
        "tf-predict": ("POST", f"/v1/models/m/versions/{quoted}:predict", {"instances": [[1] * 4]}),
        "openai-model": ("POST", "/v1/embeddings", {"model": f"emb:{selector}", "input": "a"}),
        "hf-model": ("POST", f"/models/emb:{quoted}", {"inputs": "a"}),
    }


@pytest.mark.parametrize("route", sorted(version_routes("1")))
@pytest.mark.parametrize("selector", SELECTORS)
def test_a_version_is_written_one_way(server: Server, selector: str, route: str) -> None:
    method, path, body = version_routes(selector)[route]

    r = server.http.request(method, path, json=body)

    assert r.status_code in (400, 404), r.text
    assert_still_serving(server)


@pytest.mark.parametrize("route", sorted(version_routes("1")))
def test_the_plain_version_still_works(server: Server, route: str) -> None:
    method, path, body = version_routes("1")[route]

    r = server.http.request(method, path, json=body)

    assert r.status_code == 200, r.text


@pytest.mark.parametrize("selector", ["01", "+1", " 1", "-1", "\uff11", "\u0663"])
@pytest.mark.parametrize("route", ["oip-metadata-path", "oip-infer-name", "hf-model"])
def test_a_selector_that_is_neither_says_how_to_write_one(
    server: Server, selector: str, route: str
) -> None:
    """Not a version and not an alias name either: no advice to set such an alias."""
    method, path, body = version_routes(selector)[route]

    r = server.http.request(method, path, json=body)

    assert r.status_code == 404, r.text
    assert f"has no version or alias {selector!r}" in message(r)
    assert "a version is written as digits without a sign, spaces or leading zeros" in message(r)


# the same, through the clients users run ----------------------------------------------------
def test_openai_client_gets_4xx_not_500(server: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError) as padded:
            client.embeddings.create(model="emb:01", input="a")
        with pytest.raises(openai.BadRequestError) as lone:
            client.post(  # the client's own JSON encoder refuses a lone surrogate
                "/embeddings",
                cast_to=object,
                content=b'{"model":"emb:\\ud800","input":"a"}',
                options={"headers": JSON},
            )
        served = client.embeddings.create(model="emb:1", input="a", encoding_format="float")
    finally:
        client.close()

    assert "has no version or alias '01'" in padded.value.message
    assert "model is not valid Unicode text" in lone.value.message
    assert served.data[0].embedding == pytest.approx([1 / 3] * 4)


def test_hugging_face_client_gets_a_404_for_a_padded_version(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    with pytest.raises(HfHubHTTPError) as padded:
        InferenceClient(model=f"{server.url}/models/emb:01", token=server.key).feature_extraction(
            "a"
        )
    served = InferenceClient(model=f"{server.url}/models/emb:1", token=server.key)

    assert padded.value.response is not None and padded.value.response.status_code == 404
    assert served.feature_extraction("a").tolist() == pytest.approx([1 / 3] * 4)
