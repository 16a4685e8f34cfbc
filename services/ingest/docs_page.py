"""``GET /docs``: the OpenAPI document rendered as one self-contained HTML page.

No JavaScript, no CDN, no web fonts: the page is built on the server from the same dictionary that
``/openapi.json`` serves, so the two cannot disagree, and it works on machines without internet access.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

Schema = dict[str, Any]

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_CODE = re.compile(r"`([^`]+)`")

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
main{max-width:1040px;margin:0 auto;padding:24px 28px 64px}
h1{margin:0 0 4px;font-size:28px}h2{margin:40px 0 12px;border-bottom:1px solid #dde2ea;padding-bottom:6px}
h3{margin:0;font-size:17px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
pre{background:#1d2330;color:#e8ecf2;padding:12px 14px;border-radius:6px;overflow-x:auto}
pre code{background:none;padding:0}
table{border-collapse:collapse;width:100%;margin:8px 0 16px;font-size:14px}
th,td{border:1px solid #dde2ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
section.op{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:16px 18px;margin:18px 0}
.m{display:inline-block;min-width:54px;text-align:center;color:#fff;border-radius:4px;padding:1px 6px;margin-right:8px;
font-size:13px;font-weight:700;text-transform:uppercase}
.get{background:#2f7d4f}.post{background:#2160b8}.put,.patch{background:#9a6a00}.delete{background:#b23b3b}
.muted{color:#5b6475}.req{color:#b23b3b;font-weight:600}
nav ul{columns:2;padding-left:18px}
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", escape(text))


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{_inline(part.strip())}</p>" for part in text.split("\n\n") if part.strip())


def _anchor(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")


def _ref_name(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _type(schema: Schema) -> str:
    """A short HTML description of a schema's type and constraints."""
    name = _ref_name(schema)
    if name is not None:
        return f'<a href="#{_anchor("schema", name)}">{escape(name)}</a>'
    for keyword, word in (("oneOf", "one of"), ("anyOf", "any of"), ("allOf", "all of")):
        if keyword in schema:
            return f"{word} " + ", ".join(_type(part) for part in schema[keyword])
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    if "array" in kinds:
        text = "array of " + _type(schema.get("items", {}))
    elif "object" in kinds and isinstance(schema.get("additionalProperties"), dict) and not schema.get("properties"):
        text = "map of string → " + _type(schema["additionalProperties"])
    else:
        text = escape(" | ".join(kinds))
    facts: list[str] = []
    if "format" in schema:
        facts.append(escape(schema["format"]))
    if "contentMediaType" in schema:
        facts.append(escape(schema["contentMediaType"]) + " file")
    if "const" in schema:
        facts.append("always " + escape(json.dumps(schema["const"])))
    if "enum" in schema:
        facts.append("one of " + ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"]))
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤")):
        if key in schema:
            facts.append(f"{label} {schema[key]}")
    if "maxItems" in schema:
        facts.append(f"at most {schema['maxItems']} items")
    if "default" in schema:
        facts.append(f"default {escape(json.dumps(schema['default']))}")
    if "pattern" in schema:
        facts.append(f"pattern <code>{escape(schema['pattern'])}</code>")
    return text + (f' <span class="muted">({"; ".join(facts)})</span>' if facts else "")


def _fields(schema: Schema) -> str:
    """A table of an object schema's properties, or its type when it is not an object with properties."""
    parts = schema.get("allOf")
    if parts:
        return "".join(
            _fields(part) if not _ref_name(part) else f"<p>All fields of {_type(part)}, plus:</p>" for part in parts
        )
    properties: dict[str, Schema] = schema.get("properties") or {}
    if not properties:
        return f"<p>{_type(schema)}</p>"
    required = set(schema.get("required", []))
    rows = "".join(
        "<tr><td><code>{name}</code>{req}</td><td>{type}</td><td>{desc}</td></tr>".format(
            name=escape(name),
            req=' <span class="req">required</span>' if name in required else "",
            type=_type(prop),
            desc=_inline(prop.get("description", "")),
        )
        for name, prop in properties.items()
    )
    return f"<table><tr><th>field</th><th>type</th><th>description</th></tr>{rows}</table>"


def _parameters(parameters: list[Schema]) -> str:
    if not parameters:
        return ""
    rows = "".join(
        "<tr><td><code>{name}</code>{req}</td><td>{where}</td><td>{type}</td><td>{desc}</td></tr>".format(
            name=escape(p["name"]),
            req=' <span class="req">required</span>' if p.get("required") else "",
            where=escape(p["in"]),
            type=_type(p.get("schema", {})),
            desc=_inline(p.get("description", "")),
        )
        for p in parameters
    )
    return f"<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>description</th></tr>{rows}</table>"


def _request_body(body: Schema | None) -> str:
    if not body:
        return ""
    out = ["<h4>Request body" + (' <span class="req">required</span>' if body.get("required") else "") + "</h4>"]
    for media_type, media in body.get("content", {}).items():
        out.append(f"<p><code>{escape(media_type)}</code></p>{_fields(media.get('schema', {}))}")
    return "".join(out)


def _responses(responses: dict[str, Schema]) -> str:
    rows = []
    for status, response in responses.items():
        content = response.get("content", {})
        bodies = "<br>".join(
            f"<code>{escape(media_type)}</code>: {_type(media.get('schema', {}))}"
            for media_type, media in content.items()
        )
        headers = "<br>".join(
            f"header <code>{escape(name)}</code>: {_type(header.get('schema', {}))}"
            for name, header in response.get("headers", {}).items()
        )
        rows.append(
            f"<tr><td><b>{escape(status)}</b></td><td>{_inline(response.get('description', ''))}</td>"
            f"<td>{'<br>'.join(x for x in (bodies, headers) if x) or '—'}</td></tr>"
        )
    examples = "".join(
        f"<p>Example {escape(status)} <code>{escape(media_type)}</code>:</p>"
        f"<pre><code>{escape(json.dumps(media['example'], indent=2, ensure_ascii=False))}</code></pre>"
        for status, response in responses.items()
        for media_type, media in response.get("content", {}).items()
        if "example" in media
    )
    table = "<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th></tr>" + "".join(rows)
    return table + "</table>" + examples


def _example_value(parameter: Schema) -> str:
    if "example" in parameter:
        return str(parameter["example"])
    schema = parameter.get("schema", {})
    if "default" in schema:
        return str(schema["default"])
    return f"<{parameter['name']}>"


def _curl(base_url: str, method: str, path: str, operation: Schema, parameters: list[Schema], keyed: bool) -> str:
    url_path = path
    for p in parameters:
        if p["in"] == "path":
            url_path = url_path.replace("{" + p["name"] + "}", _example_value(p))
    query = "&".join(f"{p['name']}={_example_value(p)}" for p in parameters if p["in"] == "query")
    url = base_url.rstrip("/") + url_path + (f"?{query}" if query else "")
    words = ["curl"]
    if keyed:
        words.append("-H 'X-API-Key: <key>'")
    for p in parameters:
        if p["in"] == "header":
            words.append(f"-H '{p['name']}: {_example_value(p)}'")
    if method == "post" and "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):
        words += ["-F file=@products.csv", "-F webhook_url=https://example.com/hooks/pixpress"]
    elif method != "get":
        words.append(f"-X {method.upper()}")
    if path.endswith(".csv"):
        words += ["-L", "-o", "output.csv"]
    words.append(f"'{url}'")
    if len(words) <= 2:
        return " ".join(words)
    return "curl " + " \\\n  ".join(words[1:])


def _operations(spec: Schema) -> list[tuple[str, str, Schema, list[Schema]]]:
    found = []
    for path, item in spec.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in _METHODS:
            if method in item:
                operation = item[method]
                found.append((method, path, operation, [*shared, *operation.get("parameters", [])]))
    return found


def render_docs(spec: Schema, base_url: str) -> str:
    """The whole page; ``base_url`` is where this server is reached (used in the curl examples)."""
    info = spec.get("info", {})
    global_security = spec.get("security")
    operations = _operations(spec)
    toc = "".join(
        f'<li><a href="#{_anchor(method, path)}"><span class="m {method}">{method}</span><code>{escape(path)}</code>'
        f"</a> — {_inline(op.get('summary', ''))}</li>"
        for method, path, op, _ in operations
    )
    sections = []
    for method, path, operation, parameters in operations:
        keyed = bool(operation.get("security", global_security))
        sections.append(
            f'<section class="op" id="{_anchor(method, path)}">'
            f'<h3><span class="m {method}">{method}</span>{escape(path)}</h3>'
            f"<p><b>{_inline(operation.get('summary', ''))}</b></p>"
            f"{_paragraphs(operation.get('description', ''))}"
            f"{_parameters(parameters)}{_request_body(operation.get('requestBody'))}"
            f"{_responses(operation.get('responses', {}))}"
            f"<h4>Example</h4><pre><code>{escape(_curl(base_url, method, path, operation, parameters, keyed))}"
            "</code></pre></section>"
        )
    schemas = "".join(
        f'<section class="op" id="{_anchor("schema", name)}"><h3>{escape(name)}</h3>'
        f"{_paragraphs(schema.get('description', ''))}{_fields(schema)}</section>"
        for name, schema in spec.get("components", {}).get("schemas", {}).items()
    )
    limits = info.get("x-pixpress-limits", {})
    limits_table = "".join(
        f"<tr><td><code>PIXPRESS_{escape(key.upper())}</code></td><td>{escape(str(value))}</td></tr>"
        for key, value in limits.items()
    )
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(info.get('title', 'API'))} documentation</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>{escape(info.get('title', 'API'))}</h1>"
        f'<p class="muted">version {escape(info.get("version", ""))} · OpenAPI {escape(spec.get("openapi", ""))} · '
        f'machine-readable: <a href="/openapi.json">/openapi.json</a></p>'
        f"<p><b>{_inline(info.get('summary', ''))}</b></p>{_paragraphs(info.get('description', ''))}"
        "<h2>Quick start</h2><pre><code>"
        + escape(
            "cat > products.csv <<'EOF'\n"
            "Serial Number,Product Name,Input Image Urls\n"
            '1,SKU1,"https://example.com/a.jpg, https://example.com/b.jpg"\n'
            "EOF\n"
            f"curl -F file=@products.csv {base_url.rstrip('/')}/upload\n"
            f"curl {base_url.rstrip('/')}/status/<request_id>"
        )
        + "</code></pre>"
        + (
            f"<h2>Limits on this server</h2><table><tr><th>setting</th><th>value</th></tr>{limits_table}</table>"
            if limits_table
            else ""
        )
        + f"<h2>Endpoints</h2><nav><ul>{toc}</ul></nav>{''.join(sections)}"
        f"<h2>Schemas</h2>{schemas}"
        "</main></body></html>"
    )
