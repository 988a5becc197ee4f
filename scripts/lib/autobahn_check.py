#!/usr/bin/env python3
"""Check Autobahn|Testsuite results (index.json) against Volley's conformance rule.

Usage:
  autobahn_check.py [ROLE=]INDEX_JSON [[ROLE=]INDEX_JSON ...] [options]

  e.g. autobahn_check.py server=e2e/autobahn/reports/server/index.json \\
                         client=e2e/autobahn/reports/client/index.json

Rule: every case must have behavior OK or INFORMATIONAL and behaviorClose OK or
INFORMATIONAL. NON-STRICT, FAILED, WRONG CODE, UNCLEAN, FAILED BY CLIENT, ...
all fail, and so does UNIMPLEMENTED (Volley implements permessage-deflate,
sections 12 and 13), except in the sections given by --allow-unimplemented
(default none; env AUTOBAHN_ALLOW_UNIMPLEMENTED), e.g. "12,13" to check a peer
without compression (Autobahn's own report ignores behaviorClose for those
cases, and so do we). With --expect-cases,
every listed case must be present in the results (a crashed peer makes wstest
stop early and write a report with the remaining cases absent).

Prints a per-section summary table and every failing case; exits 1 if any
case fails, 2 on usage/input errors.

Options:
  --agent NAME            agent to check (default: the only agent in the file)
  --allow-unimplemented S comma-separated sections that may be UNIMPLEMENTED;
                          "" for none
  --expect-cases FILE     file with the case ids that must be present (JSON
                          list, or one id per line); applies to every input
  --markdown FILE         write a markdown summary (for docs/CONFORMANCE.md)
  --write-expected DIR    write DIR/<ROLE>.json: {case_id: [behavior, behaviorClose]}
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

PASS = ("OK", "INFORMATIONAL")
UNIMPLEMENTED = "UNIMPLEMENTED"

SECTION_NAMES = {
    1: "Framing",
    2: "Pings/Pongs",
    3: "Reserved Bits",
    4: "Opcodes",
    5: "Fragmentation",
    6: "UTF-8 Handling",
    7: "Close Handling",
    9: "Limits/Performance",
    10: "Misc",
    12: "WebSocket Compression (different payloads)",
    13: "WebSocket Compression (different parameters)",
}


def case_key(case_id):
    try:
        return tuple(int(x) for x in case_id.split("."))
    except ValueError:
        return (float("inf"), case_id)


def section_of(case_id):
    return case_key(case_id)[0]


class RoleResult:
    def __init__(self, role, path, agent, cases, allowed_unimpl, expected_ids):
        self.role = role
        self.path = path
        self.agent = agent
        self.cases = OrderedDict(sorted(cases.items(), key=lambda kv: case_key(kv[0])))
        self.allowed_unimpl = allowed_unimpl
        self.missing = sorted(set(expected_ids or ()) - set(self.cases), key=case_key)
        # per section: [cases, ok, informational, unimplemented, failed]
        self.sections = OrderedDict()
        self.failures = []  # (case_id, behavior, behaviorClose, reason)
        for cid, res in self.cases.items():
            b = res.get("behavior")
            bc = res.get("behaviorClose")
            sec = section_of(cid)
            row = self.sections.setdefault(sec, [0, 0, 0, 0, 0])
            row[0] += 1
            if b == UNIMPLEMENTED and sec in allowed_unimpl:
                row[3] += 1
            elif b in PASS and bc in PASS:
                if b == "INFORMATIONAL" or bc == "INFORMATIONAL":
                    row[2] += 1
                else:
                    row[1] += 1
            else:
                row[4] += 1
                self.failures.append((cid, b, bc, res.get("remoteCloseCode")))
        for cid in self.missing:
            row = self.sections.setdefault(section_of(cid), [0, 0, 0, 0, 0])
            row[0] += 1
            row[4] += 1
            self.failures.append((cid, "MISSING", "MISSING", None))
        self.sections = OrderedDict(sorted(self.sections.items(), key=lambda kv: case_key(str(kv[0]))))
        self.failures.sort(key=lambda f: case_key(f[0]))

    @property
    def ok(self):
        return not self.failures and bool(self.cases)

    @property
    def total(self):
        return len(self.cases) + len(self.missing)

    def totals(self):
        t = [0, 0, 0, 0, 0]
        for row in self.sections.values():
            t = [a + b for a, b in zip(t, row)]
        return t

    def status_line(self):
        if not self.cases:
            return "%s: FAILED (no case results in %s)" % (self.role, self.path)
        t = self.totals()
        if self.ok:
            extra = ", %d UNIMPLEMENTED allowed" % t[3] if t[3] else ""
            return "%s: OK (%d cases%s)" % (self.role, t[0], extra)
        return "%s: FAILED (%d of %d cases)" % (self.role, t[4], t[0])


def fail(msg):
    print("autobahn_check: " + msg, file=sys.stderr)
    sys.exit(2)


def load_role(role, path, agent, allowed_unimpl, expected_ids):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        fail("cannot read %s: %s" % (path, e))
    if not isinstance(data, dict):
        fail("%s: unexpected format" % path)
    if agent is None:
        if len(data) != 1:
            fail(
                "%s has agents %s; choose one with --agent" % (path, sorted(data) or "none")
            )
        agent = next(iter(data))
    if agent not in data:
        fail("%s has no results for agent %r (agents: %s)" % (path, agent, sorted(data)))
    return RoleResult(role, path, agent, data[agent], allowed_unimpl, expected_ids)


def text_report(r):
    out = []
    out.append("== %s role (agent %s, %s)" % (r.role, r.agent, r.path))
    hdr = ("section", "cases", "OK", "INFORMATIONAL", "UNIMPLEMENTED", "failed")
    rows = [(str(s), *[str(x) for x in row]) for s, row in r.sections.items()]
    rows.append(("total", *[str(x) for x in r.totals()]))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    fmt = "  ".join("%%%ds" % w if i else "%%-%ds" % w for i, w in enumerate(widths))
    out.append(fmt % hdr)
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            out.append("  ".join("-" * w for w in widths))
        out.append(fmt % row)
    if r.failures:
        out.append("failing cases (%d):" % len(r.failures))
        for cid, b, bc, code in r.failures:
            extra = "" if code is None else "  remoteCloseCode=%s" % code
            out.append("  %-10s behavior=%-14s behaviorClose=%s%s" % (cid, b, bc, extra))
    out.append(r.status_line())
    return "\n".join(out)


def markdown_report(results, allowed_unimpl):
    md = []
    md.append("# Autobahn|Testsuite conformance")
    md.append("")
    md.append("Generated by `scripts/conformance` (checker: `scripts/lib/autobahn_check.py`).")
    md.append("")
    allowed = ", ".join(str(s) for s in sorted(allowed_unimpl)) or "none"
    md.append(
        "Rule: every case must report behavior `OK` or `INFORMATIONAL` and behaviorClose "
        "`OK` or `INFORMATIONAL`; `UNIMPLEMENTED` is accepted only in sections: %s." % allowed
    )
    md.append("")
    md.append("| role | agent | cases | result |")
    md.append("| --- | --- | ---: | --- |")
    for r in results:
        md.append("| %s | %s | %d | %s |" % (r.role, r.agent, r.total, "pass" if r.ok else "**FAIL**"))
    for r in results:
        md.append("")
        md.append("## %s role" % r.role)
        md.append("")
        md.append("| section | name | cases | OK | INFORMATIONAL | UNIMPLEMENTED | failed |")
        md.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for s, row in r.sections.items():
            md.append("| %s | %s | %s |" % (s, SECTION_NAMES.get(s, ""), " | ".join(str(x) for x in row)))
        md.append("| **total** | | %s |" % " | ".join("**%d**" % x for x in r.totals()))
        if r.failures:
            md.append("")
            md.append("Failing cases:")
            md.append("")
            md.append("| case | behavior | behaviorClose |")
            md.append("| --- | --- | --- |")
            for cid, b, bc, _ in r.failures:
                md.append("| %s | %s | %s |" % (cid, b, bc))
    md.append("")
    return "\n".join(md)


def write_expected(r, directory):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "%s.json" % r.role)
    lines = [
        "  %s: %s" % (json.dumps(cid), json.dumps([res.get("behavior"), res.get("behaviorClose")]))
        for cid, res in r.cases.items()
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    return path


def parse_sections(spec):
    out = set()
    for part in (spec or "").replace(" ", "").split(","):
        if not part:
            continue
        try:
            out.add(int(part.rstrip(".*")))
        except ValueError:
            fail("bad section %r in --allow-unimplemented" % part)
    return out


def read_expected_ids(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        ids = json.loads(text)
    except ValueError:
        ids = text.split()
    if not isinstance(ids, list):
        fail("%s: expected a JSON list of case ids" % path)
    return [str(x) for x in ids]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    ap.add_argument("inputs", nargs="+", metavar="[ROLE=]INDEX_JSON")
    ap.add_argument("--agent")
    ap.add_argument(
        "--allow-unimplemented",
        default=os.environ.get("AUTOBAHN_ALLOW_UNIMPLEMENTED", ""),
    )
    ap.add_argument("--expect-cases")
    ap.add_argument("--markdown")
    ap.add_argument("--write-expected")
    args = ap.parse_args(argv)

    allowed = parse_sections(args.allow_unimplemented)
    expected_ids = read_expected_ids(args.expect_cases) if args.expect_cases else None

    results = []
    for spec in args.inputs:
        if "=" in spec:
            role, path = spec.split("=", 1)
        else:
            path = spec
            role = os.path.basename(os.path.dirname(os.path.abspath(path))) or "results"
        results.append(load_role(role, path, args.agent, allowed, expected_ids))

    for i, r in enumerate(results):
        if i:
            print()
        print(text_report(r))

    if args.markdown:
        d = os.path.dirname(os.path.abspath(args.markdown))
        os.makedirs(d, exist_ok=True)
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown_report(results, allowed))
        print("autobahn_check: wrote markdown summary to %s" % args.markdown)
    if args.write_expected:
        for r in results:
            print("autobahn_check: wrote %s" % write_expected(r, args.write_expected))

    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
