#!/usr/bin/env python3
"""Tests of bench_report.py (run by scripts/test): paired ratios, the goals view, the fallbacks."""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_report  # noqa: E402


def echo(stack: str, workload: str, rnd: int, rate: float | None, ok: bool = True) -> dict:
    bench = {"msg_per_s": rate, "latency_us": {"p50": 10.0, "p99": 20.0, "p99_9": 30.0}}
    return {"kind": "echo", "stack": stack, "workload": workload, "round": rnd, "ok": ok,
            "error": None if ok else "boom", "bench": bench if rate is not None else None}


def results(runs: list[dict]) -> dict:
    return {"version": 1, "meta": {}, "stacks": [], "workloads": [], "runs": runs, "memory": []}


class PairedRatios(unittest.TestCase):
    def test_the_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians(self):
        # The machine slows down in round 2: both stacks drop, their ratio does not.
        runs = [
            echo("volley", "100x20", 1, 100.0), echo("raw-tcp", "100x20", 1, 110.0),
            echo("volley", "100x20", 2, 50.0), echo("raw-tcp", "100x20", 2, 55.0),
            echo("volley", "100x20", 3, 80.0), echo("raw-tcp", "100x20", 3, 200.0),
        ]
        s = bench_report.summarise(results(runs))
        cell = s["echo"]["raw-tcp"]["100x20"]
        self.assertAlmostEqual(cell["ratio_vs_volley"], 1.1)
        self.assertEqual(cell["ratio_vs_volley_range"], [1.1, 2.5])
        # The medians alone would say 110 / 80.
        self.assertEqual(cell["msg_per_s_median"], 110.0)
        self.assertEqual(s["echo"]["volley"]["100x20"]["msg_per_s_median"], 80.0)
        goal = s["goals"]["100x20"]["raw_tcp"]
        self.assertAlmostEqual(goal["ratio"], 1 / 1.1)
        self.assertEqual(goal["rounds"], 3)

    def test_the_best_rust_peer_is_the_one_volley_compares_worst_against(self):
        runs = []
        for rnd in (1, 2, 3):
            runs += [
                echo("volley", "200x16384", rnd, 100.0),
                echo("fastwebsockets", "200x16384", rnd, 80.0),
                echo("tokio-websockets", "200x16384", rnd, 90.0),
                echo("node-ws", "200x16384", rnd, 150.0),  # not a Rust peer
            ]
        s = bench_report.summarise(results(runs))
        best = s["goals"]["200x16384"]["best_rust_peer"]
        self.assertEqual(best["stack"], "tokio-websockets")
        self.assertAlmostEqual(best["ratio"], 100 / 90)
        self.assertNotIn("raw_tcp", s["goals"]["200x16384"])
        self.assertNotIn("raw_tcp_vs_best_rust_peer", s["goals"]["200x16384"])
        table = bench_report.markdown_table(s)
        self.assertIn("| 200×16 KiB | tokio-websockets: **1.11×** (1.11–1.11, 3 rounds) | — | — |", table)

    def test_the_ceiling_is_compared_with_the_best_rust_peer_too(self):
        runs = []
        for rnd, (v, f, t, raw) in enumerate([(100, 90, 95, 100), (80, 75, 70, 84)], 1):
            runs += [
                echo("volley", "100x20", rnd, v), echo("fastwebsockets", "100x20", rnd, f),
                echo("tokio-websockets", "100x20", rnd, t), echo("raw-tcp", "100x20", rnd, raw),
            ]
        g = bench_report.summarise(results(runs))["goals"]["100x20"]
        # Volley ÷ fastwebsockets: 1.111, 1.067; ÷ tokio-websockets: 1.053, 1.143.
        self.assertEqual(g["best_rust_peer"]["stack"], "fastwebsockets")
        self.assertAlmostEqual(g["best_rust_peer"]["ratio"], (100 / 90 + 80 / 75) / 2)
        self.assertAlmostEqual(g["raw_tcp_vs_best_rust_peer"]["ratio"], (100 / 90 + 84 / 75) / 2)
        self.assertEqual(g["raw_tcp_vs_best_rust_peer"]["rounds"], 2)

    def test_failed_rounds_are_left_out_of_the_pairs_and_listed(self):
        runs = [
            echo("volley", "1x20", 1, 100.0), echo("fastwebsockets", "1x20", 1, 120.0),
            echo("volley", "1x20", 2, None, ok=False), echo("fastwebsockets", "1x20", 2, 10.0),
        ]
        s = bench_report.summarise(results(runs))
        cell = s["echo"]["fastwebsockets"]["1x20"]
        self.assertEqual(cell["ratio_vs_volley_rounds"], [1.2])
        self.assertEqual(s["echo"]["volley"]["1x20"]["failed_rounds"], 1)
        self.assertEqual(len(s["failures"]), 1)
        self.assertIn("FAILURES", bench_report.markdown_table(s))

    def test_results_without_round_numbers_fall_back_to_the_ratio_of_medians(self):
        runs = [echo("volley", "100x20", 1, 100.0), echo("raw-tcp", "100x20", 1, 120.0)]
        for r in runs:
            del r["round"]
        s = bench_report.summarise(results(runs))
        self.assertAlmostEqual(s["echo"]["raw-tcp"]["100x20"]["ratio_vs_volley"], 1.2)
        self.assertEqual(s["goals"], {})

    def test_the_chart_plots_the_paired_ratios(self):
        runs = [
            echo("volley", "100x20", 1, 100.0), echo("raw-tcp", "100x20", 1, 110.0),
            echo("volley", "100x20", 2, 50.0), echo("raw-tcp", "100x20", 2, 55.0),
            echo("volley", "100x20", 3, 80.0), echo("raw-tcp", "100x20", 3, 200.0),
        ]
        svg = bench_report.svg_chart(bench_report.summarise(results(runs)))
        self.assertIn("(1.10× Volley)", svg)



class SocketIoServerCpu(unittest.TestCase):
    def test_server_cpu_per_message_is_paired_and_judged_against_the_goals(self):
        def sio(stack, rnd, rate, cpu):
            return {"kind": "sio", "stack": stack, "workload": "sio-echo", "round": rnd, "ok": True,
                    "error": None, "bench": {"msg_per_s": rate, "server_cpu_us_per_msg": cpu,
                                             "latency_us": {"p50": 1.0, "p99": 2.0}}}
        # The generator limits both servers to the same rate; the CPU tells them apart.
        runs = [sio("volley-sio", 1, 100.0, 4.0), sio("socketioxide", 1, 100.0, 6.0),
                sio("volley-sio", 2, 90.0, 5.0), sio("socketioxide", 2, 90.0, 5.5),
                sio("volley-sio", 3, 95.0, 4.0), sio("socketioxide", 3, 95.0, 5.6)]
        s = bench_report.sio_summary({"socketio": {
            "runs": runs, "memory": [], "workloads": ["sio-echo"],
            "stacks": ["volley-sio", "socketioxide"]}})
        cell = s["echo"]["socketioxide"]["sio-echo"]
        self.assertEqual(cell["cpu_ratio_vs_volley_rounds"], [1.5, 1.1, 1.4])
        self.assertEqual(cell["server_cpu_us_median"], 5.6)
        rows = [g for g in bench_report.sio_goal_rows(s) if g.get("cpu")]
        self.assertEqual(len(rows), 1)
        self.assertAlmostEqual(rows[0]["ratio"], 1.4)
        self.assertTrue(rows[0]["met"])
        table = bench_report.sio_markdown(s)
        self.assertIn("server CPU µs/event", table)
        self.assertIn("| 5.6 (1.40×) |", table)
        self.assertIn("in server CPU per message | 1.40× (1.10–1.50, 3 rounds) | **met** |", table)

def storm(stack: str, rnd: int, rate: float | None, p99: float = 50.0, echo_p99: float = 60.0,
          failures: dict | None = None, ok: bool = True) -> dict:
    kinds = {k: 0 for k in bench_report.STORM_FAILURE_KINDS}
    kinds.update(failures or {})
    bench = {"mode": "storm", "count": 1000, "handshakes_per_s": rate,
             "handshake_ms": {"p50": 5.0, "p99": p99}, "echo_ms": {"p50": 6.0, "p99": echo_p99},
             "failed": sum(kinds.values()), "failures": kinds, "closed_before_end": 0}
    return {"kind": "storm", "stack": stack, "round": rnd, "count": 1000, "ok": ok,
            "error": None if ok else "boom", "bench": bench if rate is not None else None}


def storm_results(runs: list[dict]) -> dict:
    stacks = ["volley", "fastwebsockets", "tokio-websockets", "node-ws", "raw-tcp"]
    return {"version": 1, "meta": {}, "stacks": [], "workloads": [], "runs": [], "memory": [],
            "storm": {"stacks": stacks, "clients": 1000, "runs": runs}}


class Storm(unittest.TestCase):
    def test_the_echo_cpu_table_pairs_cpu_per_echo_and_shows_the_generator(self):
        def run(stack, rnd, rate, cpu, gen):
            r = echo(stack, "100x20", rnd, rate)
            r["bench"].update(server_cpu_us_per_msg=cpu, generator_cpu_percent=gen)
            return r
        runs = [
            run("volley", 1, 100.0, 3.0, 99.0), run("raw-tcp", 1, 100.0, 2.7, 98.0),
            run("volley", 2, 100.0, 2.0, 99.5), run("raw-tcp", 2, 100.0, 2.2, 99.0),
            run("volley", 3, 100.0, 4.0, 97.0), run("raw-tcp", 3, 100.0, 4.4, 96.0),
        ]
        s = bench_report.summarise(results(runs))
        self.assertEqual(s["echo"]["volley"]["100x20"]["generator_cpu_percent_median"], 99.0)
        table = bench_report.echo_cpu_table(s)
        # raw ÷ Volley per round: 0.9, 1.1, 1.1 -> 1.10, not the ratio of the medians (2.7 / 3.0).
        self.assertIn("| 100×20 B | 98–99 % | 3.00 | 2.70 (1.10×) |", table)
        self.assertIn(table, bench_report.markdown_table(s))
        # Without CPU numbers (older results) there is no table.
        plain = bench_report.summarise(results([echo("volley", "100x20", 1, 100.0)]))
        self.assertEqual(bench_report.echo_cpu_table(plain), "")

    def test_the_storm_table_pairs_rounds_and_sums_failures(self):
        runs = []
        # Round 2 is slow for everyone: the paired ratios do not move.
        for rnd, scale in ((1, 1.0), (2, 0.5), (3, 1.0)):
            runs += [
                storm("volley", rnd, 30000 * scale, p99=40.0 + rnd),
                storm("fastwebsockets", rnd, 10000 * scale, p99=1020.0),
                storm("tokio-websockets", rnd, 12000 * scale, p99=1030.0),
                storm("node-ws", rnd, 6000 * scale, p99=1240.0,
                      failures={1: {"reset": 1}, 3: {"timeout": 2}}.get(rnd)),
            ]
        s = bench_report.storm_summary(storm_results(runs))
        volley = s["rows"]["volley"]
        self.assertEqual(volley["handshakes_per_s_median"], 30000.0)
        self.assertEqual(volley["p99_101_ms_median"], 42.0)
        self.assertEqual(volley["failed_connections"], 0)
        self.assertAlmostEqual(s["rows"]["tokio-websockets"]["ratio_vs_volley"], 0.4)
        self.assertEqual(s["rows"]["node-ws"]["failures"]["timeout"], 2)
        self.assertEqual(s["rows"]["node-ws"]["failed_connections"], 3)
        # The best Rust peer is the one Volley compares worst against (Node is not a Rust peer).
        best = s["best_rust_peer"]
        self.assertEqual(best["stack"], "tokio-websockets")
        self.assertAlmostEqual(best["ratio"], 2.5)
        self.assertEqual(best["range"], [2.5, 2.5])
        goals = {g["goal"]: g for g in s["goals"]}
        self.assertIs(goals["zero failures"]["met"], True)
        self.assertIs(goals["p99 connect → 101 < 100 ms"]["met"], True)
        self.assertIs(goals["handshakes/s ≥ 1.5× the best Rust peer (paired)"]["met"], True)
        self.assertIs(goals["handshakes/s ≥ 2× the issue's 9,100"]["met"], True)
        table = bench_report.storm_markdown(s)
        self.assertIn("| Volley | 30,000 (1.00×) | 42.0 | 60.0 | 0 of 3,000 (0 / 0 / 0 / 0 / 0 / 0) |", table)
        self.assertIn("| Node ws | 6,000 (0.20×) | 1,240 | 60.0 | 3 of 3,000 (0 / 1 / 2 / 0 / 0 / 0) |", table)
        self.assertIn("Volley ÷ best Rust peer (tokio-websockets): **2.50×** (2.50–2.50, 3 rounds)", table)
        self.assertNotIn("raw TCP", table)

    def test_missed_goals_and_failed_rounds_are_reported(self):
        runs = [
            storm("volley", 1, 15000, p99=150.0, failures={"refused": 4}),
            storm("fastwebsockets", 1, 12000),
            storm("volley", 2, None, ok=False),
            storm("fastwebsockets", 2, 11000),
        ]
        s = bench_report.storm_summary(storm_results(runs))
        goals = {g["goal"]: g for g in s["goals"]}
        self.assertIs(goals["zero failures"]["met"], False)
        self.assertIs(goals["p99 connect → 101 < 100 ms"]["met"], False)
        self.assertIs(goals["handshakes/s ≥ 1.5× the best Rust peer (paired)"]["met"], False)
        self.assertIs(goals["handshakes/s ≥ 2× the issue's 9,100"]["met"], False)
        self.assertEqual(s["rows"]["volley"]["failed_rounds"], 1)
        # Only round 1 pairs: 15,000 ÷ 12,000.
        self.assertAlmostEqual(s["best_rust_peer"]["ratio"], 1.25)
        table = bench_report.storm_markdown(s)
        self.assertIn("FAILURES:", table)
        self.assertIn("Volley storm round 2: boom", table)
        self.assertIn("| 15,000 (1.00×) [1 failed] |", table)
        self.assertIn("| zero failures | 4 | **missed** |", table)

    def test_no_storm_results_no_table(self):
        self.assertIsNone(bench_report.storm_summary(results([])))


if __name__ == "__main__":
    unittest.main()
