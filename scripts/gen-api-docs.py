#!/usr/bin/env python3
"""Reference docs for the public API, from the protos' own comments.

Reads a buf image as JSON (`buf build -o image.json`, source info included)
and writes docs/api/discovery.v1.md: the Discovery service's methods (with the
scope each needs and whether it streams), then every message and enum they
reach, field by field with JSON names, types and comments. Run by
scripts/check-hygiene.sh, which fails if the committed file is not what the
protos say (regenerate with `scripts/check-hygiene.sh --write-docs`).
"""
import json
import re
import sys

SCALARS = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64",
    7: "fixed32", 8: "bool", 9: "string", 12: "bytes", 13: "uint32",
    15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64",
}
TYPE_NAME = {"TYPE_" + v.upper(): v for v in SCALARS.values()}


def comments(file):
    """path tuple -> leading comment (one paragraph, whitespace folded)."""
    out = {}
    for loc in file.get("sourceCodeInfo", {}).get("location", []):
        text = loc.get("leadingComments") or loc.get("trailingComments")
        if text and "path" in loc:
            out[tuple(loc["path"])] = " ".join(text.split())
    return out


def main(image_path, out_path):
    image = json.load(open(image_path))
    messages, enums = {}, {}

    def walk(file, note, prefix, msgs, path):
        for i, m in enumerate(msgs):
            name = f"{prefix}.{m['name']}"
            mpath = path + (i,)
            messages[name] = (m, note, mpath)
            for j, e in enumerate(m.get("enumType", [])):
                enums[f"{name}.{e['name']}"] = (e, note, mpath + (4, j))
            walk(file, note, name, m.get("nestedType", []), mpath + (3,))

    service = None
    for f in image["file"]:
        if not f["name"].startswith("discovery/"):
            continue
        note = comments(f)
        pkg = "." + f["package"]
        walk(f, note, pkg, f.get("messageType", []), (4,))
        for j, e in enumerate(f.get("enumType", [])):
            enums[f"{pkg}.{e['name']}"] = (e, note, (5, j))
        for i, s in enumerate(f.get("service", [])):
            if s["name"] == "Discovery":
                service = (s, note, (6, i))

    s, note, spath = service
    lines = [
        "# discovery.v1 — the public API",
        "",
        "Generated from `proto/discovery/v1/` by `scripts/gen-api-docs.py`; do not edit.",
        "",
        note.get(spath, ""),
        "",
        "Every method is `POST /discovery.v1.Discovery/<Method>`: gRPC, gRPC-Web, or",
        "(unary methods) Connect with `application/json` or `application/proto`.",
        "",
        "| method | request → response | scope | what it does |",
        "|---|---|---|---|",
    ]
    reached = []
    for k, m in enumerate(s["method"]):
        text = note.get(spath + (2, k), "")
        scope = re.search(r'\(scope "(\w+)"\)', text)
        stream_in = "stream " if m.get("clientStreaming") else ""
        stream_out = "stream " if m.get("serverStreaming") else ""
        req, resp = m["inputType"], m["outputType"]
        reached += [req, resp]
        lines.append(
            f"| `{m['name']}` | {stream_in}[{req.split('.')[-1]}](#{req.split('.')[-1].lower()}) → "
            f"{stream_out}[{resp.split('.')[-1]}](#{resp.split('.')[-1].lower()}) | "
            f"{scope.group(1) if scope else 'public'} | {text} |"
        )

    seen_m, seen_e, order = set(), set(), []
    while reached:
        name = reached.pop(0)
        if name in seen_m or name not in messages:
            continue
        seen_m.add(name)
        order.append(name)
        m, _, _ = messages[name]
        for fld in m.get("field", []):
            t = fld.get("typeName")
            if t in messages:
                reached.append(t)
            elif t in enums:
                seen_e.add(t)

    def type_of(fld):
        t = fld.get("typeName")
        base = t.split(".")[-1] if t else TYPE_NAME.get(fld["type"], fld["type"])
        if t and t in messages and messages[t][0].get("options", {}).get("mapEntry"):
            entry = messages[t][0]["field"]
            return f"map<{type_of(entry[0])}, {type_of(entry[1])}>"
        if t:
            base = f"[{base}](#{base.lower()})"
        return ("repeated " if fld.get("label") == "LABEL_REPEATED" else "") + base

    lines += ["", "## Messages", ""]
    for name in order:
        m, fnote, mpath = messages[name]
        if m.get("options", {}).get("mapEntry"):
            continue
        short = name.split(".")[-1]
        lines += [f"### {short}", "", fnote.get(mpath, ""), ""]
        if not m.get("field"):
            lines += ["(no fields)", ""]
            continue
        lines += ["| field (JSON) | type | meaning |", "|---|---|---|"]
        for j, fld in enumerate(m["field"]):
            text = fnote.get(mpath + (2, j), "")
            lines.append(f"| `{fld['name']}` (`{fld.get('jsonName', fld['name'])}`) | {type_of(fld)} | {text} |")
        lines.append("")

    lines += ["## Enums", ""]
    for name in sorted(seen_e, key=lambda n: n.split(".")[-1]):
        e, enote, epath = enums[name]
        short = name.split(".")[-1]
        lines += [f"### {short}", "", enote.get(epath, ""), "", "| value | meaning |", "|---|---|"]
        for j, v in enumerate(e.get("value", [])):
            lines.append(f"| `{v['name']}` | {enote.get(epath + (2, j), '')} |")
        lines.append("")

    text = "\n".join(l.rstrip() for l in lines).replace("\n\n\n", "\n\n").rstrip() + "\n"
    open(out_path, "w").write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
