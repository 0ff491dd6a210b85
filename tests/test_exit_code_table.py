"""Every row of docs/troubleshooting.md's two tables has a test that runs it through the CLI (issue 10 §5).

``ROWS`` maps each row (a distinctive fragment of its first column) to the tests that run that code path
through the CLI (CliRunner, the in-process fault harness, or a subprocess) and assert its exit code and
message. A new row without a test fails here; so does a test that was renamed or removed, and a fault
matrix cell whose exit code no longer matches the row's. ``WHY`` does the same for the gaps issue 10's
"Why" reproduced: each names the CLI tests that now hold it closed.

Fast: it reads the doc and imports test modules; nothing is run.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "troubleshooting.md"
CELL = "tests/faults/test_fault_matrix.py::test_fault_cell"


def cell(cell_id: str) -> str:
    return f"{CELL}[{cell_id}]"


E2E = "tests/e2e"
ROWS: dict[str, tuple[str, ...]] = {
    "was destroyed by another glmdeploy command": (
        "tests/faults/test_kill9.py::test_destroy_from_another_terminal_while_up_runs",
        "tests/faults/test_kill9.py::test_up_that_fails_while_another_destroy_is_half_done_says_destroyed_elsewhere",
    ),
    "`no Vast.ai API key": (
        "tests/test_cli_offers.py::test_no_api_key_exits_2_without_calling_vast",
        f"{E2E}/test_bad_input.py::test_no_api_key_exits_2_and_says_how_to_fix_it",
    ),
    "`refusing to rent without confirmation`": (
        "tests/test_check_before_renting.py::test_name_clash_missing_key_and_refusal_come_before_any_request_in_that_order",
        f"{E2E}/test_bad_input.py::test_refuses_to_rent_without_a_terminal_or_yes",
    ),
    "`profile ... does not fit`": (
        f"{E2E}/test_bad_input.py::test_up_refuses_what_the_planner_says_does_not_fit_unless_forced",
    ),
    "is not accepted by vLLM X": (
        "tests/test_engine_flags.py::test_removed_flag_in_extra_args_is_refused_with_one_line_and_exit_2",
        f"{E2E}/test_engine_flags_e2e.py::test_up_refuses_a_removed_flag_before_renting",
    ),
    "names no known ... release": (
        "tests/test_engine_flags.py::test_unknown_image_tag_warns_in_plan_and_is_refused_by_up_unless_forced",
        f"{E2E}/test_engine_flags_e2e.py::test_up_refuses_an_unknown_image_tag_and_the_sandbox_fails_its_pull",
    ),
    "cannot load this model": (
        "tests/faults/test_exit_code_paths.py::"
        "test_an_image_that_cannot_load_the_model_is_refused_and_forced_fails_as_unsupported_arch",
    ),
    "matching offer(s) on separate machines": (f"{E2E}/test_replicas.py::test_bad_input_rents_nothing",),
    "`the gateway port HOST:PORT is taken": (f"{E2E}/test_replicas.py::test_bad_input_rents_nothing",),
    "needs the SMG gateway, which is not installed": (
        "tests/test_replicas_state.py::test_missing_smg_from_the_cli_exits_2_before_renting",
    ),
    "`no offer matches profile": (
        "tests/test_cli_offers.py::test_nothing_under_the_cap_exits_3",
        f"{E2E}/test_bad_input.py::test_no_offer_under_the_cap_exits_3",
    ),
    "`engine failed: cuda_oom": (
        f"{E2E}/test_up_lifecycle.py::test_failures_destroy_the_instance_and_exit_4[engine_oom-extra0-wait_ready-cuda_oom]",
        cell("wait_ready-engine_OOM"),
    ),
    "`engine failed: kv_does_not_fit`": (cell("wait_ready-no_room_for_the_KV_cache"),),
    "`engine failed: unsupported_arch`": (
        "tests/faults/test_exit_code_paths.py::"
        "test_an_image_that_cannot_load_the_model_is_refused_and_forced_fails_as_unsupported_arch",
    ),
    "`engine failed: no_kernel_image` / `nccl`": (
        cell("wait_ready-no_kernel_image_for_this_GPU"),
        cell("wait_ready-NCCL_error"),
    ),
    "`engine failed: gated_repo` / `disk_full`": (
        cell("wait_ready-gated_Hugging_Face_repo"),
        cell("wait_ready-missing_Hugging_Face_repo"),
        cell("wait_ready-disk_full"),
    ),
    "`engine failed: argparse_error": (
        cell("wait_ready-argparse_error_a_removed_flag"),
        cell("ci-argparse_error_a_removed_flag"),
    ),
    "`engine failed: no_module` / `command_not_found`": (
        cell("wait_ready-No_module_named"),
        cell("wait_ready-command_not_found"),
    ),
    "`engine failed: engine_exited": (
        cell("wait_ready-engine_exit_the_log_stops_the_port_refuses"),
        cell("ci-engine_exit_the_log_stops_the_port_refuses"),
    ),
    "`image failed: manifest_unknown": (
        cell("wait_running-status_msg_manifest_unknown_while_loading_--max-attempts_2"),
        f"{E2E}/test_engine_flags_e2e.py::test_forced_up_with_an_unknown_tag_fails_as_a_pull_error_and_leaves_nothing",
        # exited with "pull access denied": image_pull
        f"{E2E}/test_exit_codes.py::test_an_instance_that_exits_with_a_docker_error_exits_4_and_is_destroyed",
    ),
    "`instance failed: status_msg_error": (
        cell("wait_running-status_msg_OCI_runtime_error_while_loading"),
        cell("wait_running-exited"),
    ),
    "`instance failed: instance_exited`": (
        cell("wait_running-exited_no_error_in_status_msg"),
        cell("wait_running-actual_status_offline"),
        cell("wait_running-actual_status_unknown"),
    ),
    "`instance failed: no_ports": (cell("wait_ready-ports_null"),),
    "`unhealthy: the engine exited": (
        "tests/faults/test_health_after_ready.py::test_status_smoke_and_list_report_a_dead_engine",
    ),
    "`still 'loading' at the timeout`": (
        f"{E2E}/test_up_lifecycle.py::test_failures_destroy_the_instance_and_exit_4"
        "[stuck_loading-extra3-wait_running-still 'loading']",
        cell("wait_running-stuck_in_loading"),
    ),
    "`Vast.ai refused the API key": (
        "tests/test_check_before_renting.py::test_a_wrong_key_is_caught_before_the_search_and_nothing_is_said_to_bill",
        "tests/test_check_before_renting.py::test_a_401_on_create_says_plainly_that_nothing_was_rented",
        f"{E2E}/test_bad_input.py::test_a_refused_key_exits_6_without_echoing_it",
    ),
    "is shorter than the readiness timeout": (
        f"{E2E}/test_ttl.py::test_a_ttl_shorter_than_the_readiness_timeout_is_refused_unless_forced",
    ),
    "`--ttl none is not allowed here`": (f"{E2E}/test_ttl.py::test_ci_refuses_ttl_none",),
    "`warning: --ttl none: no watchdog on the host`": (f"{E2E}/test_ttl.py::test_ttl_none_warns_and_arms_no_watchdog",),
    "`expires: OVERDUE`": (f"{E2E}/test_ttl.py::test_status_and_list_flag_an_overdue_instance_that_still_runs",),
    "`hung up (SIGHUP)": (
        "tests/faults/test_sighup.py::test_sighup_at_seeded_points_destroys_and_exits_129",
        "tests/faults/test_sighup.py::test_sighup_of_ci_destroys_and_exits_129",
        "tests/faults/test_sighup.py::test_sighup_during_destroy_finishes_the_teardown_then_exits_129",
    ),
    "`declined: nothing was rented`": (
        f"{E2E}/test_up_says.py::test_declining_the_rent_prompt_is_an_answer_not_an_interrupt",
    ),
    "is Known to fail": (f"{E2E}/test_up_says.py::test_a_known_to_fail_warning_needs_force",),
    "`warning: profile P: ...`": (
        f"{E2E}/test_up_says.py::test_dry_run_prints_offer_onstart_and_plan_and_rents_nothing",
    ),
    "`interrupted: whatever was rented has been destroyed`": (
        f"{E2E}/test_up_lifecycle.py::test_interrupt_during_wait_ready_destroys_and_exits_130",
    ),
    "the instance could not be destroyed": (
        "tests/faults/test_exit_code_paths.py::test_an_interrupt_whose_destroy_fails_leaves_an_orphan_and_says_so",
    ),
    "certificate does not match the one its host reported": (
        "tests/test_tls_pin.py::test_smoke_bench_and_chat_of_a_deployment_refuse_another_certificate_with_exit_9",
        f"{E2E}/test_tls_e2e.py::test_an_intercepted_endpoint_is_never_called_ready_and_never_receives_the_key",
        f"{E2E}/test_tls_e2e.py::test_url_targets_take_a_pin_or_a_ca_file_and_a_wrong_pin_is_exit_9",
    ),
    "answered in plain http where TLS was expected": (
        "tests/test_tls_pin.py::test_smoke_and_bench_of_a_deployment_answered_in_plain_http_exit_9",
    ),
    "`--ca-cert and --pin need an https:// --url`": (
        "tests/test_tls_pin.py::test_pin_and_ca_cert_belong_to_https_url_targets",
    ),
    "`Vast.ai ... unreachable` / `kept failing`": (
        f"{E2E}/test_exit_codes.py::test_vast_that_kept_failing_exits_7_and_rents_nothing",
        f"{E2E}/test_exit_codes.py::test_vast_unreachable_exits_7",
        cell("create-5xx_storm_500_JSON"),
    ),
    "`note: the engine reported N KV tokens": (
        f"{E2E}/test_kv_capacity.py::test_up_records_reported_kv_and_status_compares_it_with_the_plan[4x3090-2]",
    ),
    "`orphan: instance N bills": (
        f"{E2E}/test_up_lifecycle.py::test_kill_9_leaves_an_orphan_that_destroy_orphans_removes",
    ),
    "`N foreign instance(s)` in `list`": (
        f"{E2E}/test_ownership.py::test_machine_b_never_destroys_machine_a_live_deployment",
    ),
    "`--include-foreign needs --instance ID": (
        f"{E2E}/test_ownership.py::test_machine_b_never_destroys_machine_a_live_deployment",
        "tests/test_exit_code_messages.py::test_include_foreign_alone_is_refused_before_vast_is_asked",
    ),
    "`the Vast.ai account cannot pay`": (
        f"{E2E}/test_destroy_semantics.py::test_an_account_without_credit_exits_8_not_7",
        cell("create-no_credit_create_fail"),
    ),
    "no longer exists (destroyed), so it has no logs": (
        f"{E2E}/test_destroy_semantics.py::test_logs_of_an_instance_destroyed_behind_our_back_is_one_line_not_a_raw_404",
        f"{E2E}/test_destroy_semantics.py::test_logs_follow_ends_with_exit_0_and_one_line_when_the_instance_goes",
    ),
    "`nothing to destroy`": (f"{E2E}/test_destroy_semantics.py::test_destroy_with_nothing_to_destroy_exits_0",),
    "`could not look for orphans": (
        f"{E2E}/test_destroy_semantics.py::test_destroy_orphans_without_a_key_fails_instead_of_finding_nothing",
        f"{E2E}/test_destroy_semantics.py::test_a_sweep_without_a_key_fails_when_a_record_names_vast",
    ),
    "`Vast.ai itself not checked": (
        f"{E2E}/test_destroy_semantics.py::test_a_sandbox_only_state_dir_sweeps_without_a_key",
    ),
    "written by a newer glmdeploy": (f"{E2E}/test_bad_input.py::test_a_state_db_from_a_newer_version_is_refused",),
    # ---------------------------------------------------------------- bad input, closed pipes, wrong targets
    "`No such option: --x": ("tests/test_cli_inputs.py::test_click_usage_errors_are_one_error_line_and_exit_2",),
    "must be a positive number of $/h, got nan": (
        "tests/test_exit_code_messages.py::test_each_documented_bad_input_message_is_the_one_error_line",
        "tests/test_cli_inputs.py::test_a_bad_number_or_port_is_one_error_line_and_exit_2",
    ),
    "must be at most $128/h": (
        f"{E2E}/test_inputs.py::test_an_absurd_cap_is_refused",
        "tests/test_exit_code_messages.py::test_each_documented_bad_input_message_is_the_one_error_line",
    ),
    "is longer than 366 days": (
        "tests/test_exit_code_messages.py::test_each_documented_bad_input_message_is_the_one_error_line",
    ),
    "must be a number from 1 to 65535": (
        "tests/test_exit_code_messages.py::test_each_documented_bad_input_message_is_the_one_error_line",
        "tests/test_cli_inputs.py::test_a_bad_number_or_port_is_one_error_line_and_exit_2",
    ),
    "for glmdeploy's state": ("tests/test_cli_inputs.py::test_an_unusable_state_directory_is_one_line_and_exit_2",),
    "no message, exit 141": (
        "tests/test_cli_inputs.py::test_a_closed_pipe_ends_the_command_quietly",
        f"{E2E}/test_inputs.py::test_logs_into_a_closed_pipe_exits_quietly",
        f"{E2E}/test_inputs.py::test_up_whose_output_is_closed_mid_deploy_destroys_what_it_rented",
    ),
    "health could not connect": ("tests/test_smoke_bad_targets.py::test_a_closed_port_is_one_line_and_exit_7",),
    "health got no answer in N s": (
        "tests/test_smoke_bad_targets.py::test_every_check_honours_the_timeout_against_a_server_that_never_answers[health]",
        "tests/test_smoke_bad_targets.py::test_a_silent_server_stops_the_run_after_the_first_check",
    ),
    "could not connect after the server had answered": (
        "tests/test_smoke_bad_targets.py::test_a_connection_lost_after_health_passed_is_a_failed_check_not_unreachable",
    ),
    "not an OpenAI-compatible server": (
        "tests/test_smoke_bad_targets.py::test_a_plain_web_server_is_not_openai_compatible_not_an_auth_failure",
    ),
    "not an OpenAI-compatible endpoint": (
        "tests/test_smoke_bad_targets.py::test_the_auth_check_alone_reads_404_as_the_wrong_server",
    ),
    "`Re-sent on a new connection: N`": (
        "tests/test_bench_keepalive.py::test_bench_at_concurrency_4_loses_no_request_when_idle_connections_are_closed",
        "tests/test_bench_keepalive.py::test_bench_says_how_many_requests_it_re_sent",
    ),
    "`chat`: `cannot reach NAME": (
        "tests/test_chat_cli.py::test_unreachable_server_is_exit_7",
        "tests/test_chat_cli.py::test_a_server_that_accepts_but_never_answers_is_exit_7_within_the_timeout",
    ),
    "`chat`: `chat completion: NAME answered HTTP 401": (
        "tests/test_chat_cli.py::test_wrong_key_is_exit_5_and_never_printed",
    ),
    "`chat`: `the chat history PATH is unreadable`": (
        "tests/test_chat_cli.py::test_an_unreadable_history_is_one_line_exit_2",
    ),
    "`chat`: `note: profile P enables no reasoning parser": (
        "tests/test_chat_cli.py::test_a_deployment_whose_profile_has_no_parsers_gets_a_note",
    ),
}


# Issue 10's "Why": every gap it reproduced, and the CLI tests that now hold it closed.
WHY: dict[str, tuple[str, ...]] = {
    "destroy --orphans --yes from a second machine destroyed the first machine's deployments": (
        f"{E2E}/test_ownership.py::test_machine_b_never_destroys_machine_a_live_deployment",
    ),
    "docs/ci.md's sweep step would kill colleagues' endpoints": (
        f"{E2E}/test_ownership.py::test_a_shared_ci_scope_sweep_cleans_up_a_killed_runner_but_not_a_teammate",
    ),
    "on that second machine, list showed nothing": (
        f"{E2E}/test_ownership.py::test_machine_b_never_destroys_machine_a_live_deployment",
    ),
    "SIGHUP during up leaks a billing instance; up arms no TTL by default": (
        "tests/faults/test_sighup.py::test_sighup_at_seeded_points_destroys_and_exits_129",
        "tests/faults/test_sighup.py::test_sighup_from_a_closed_terminal_still_destroys",
        f"{E2E}/test_ttl.py::test_default_ttl_is_enforced_by_the_sandbox_and_status_says_so",
    ),
    "destroy --orphans --yes with no API key says 'no orphaned instances' and exits 0": (
        f"{E2E}/test_destroy_semantics.py::test_destroy_orphans_without_a_key_fails_instead_of_finding_nothing",
    ),
    "bench loses requests on stale keep-alive connections": (
        "tests/test_bench_keepalive.py::test_bench_at_concurrency_4_loses_no_request_when_idle_connections_are_closed",
    ),
    "--max-price 0, -1, nan or inf print 'internal error' and exit 1": (
        "tests/test_cli_inputs.py::test_a_bad_number_or_port_is_one_error_line_and_exit_2",
    ),
    "a closed pipe prints 'internal error: BrokenPipeError'": (
        "tests/test_cli_inputs.py::test_a_closed_pipe_ends_the_command_quietly",
        f"{E2E}/test_inputs.py::test_logs_into_a_closed_pipe_exits_quietly",
    ),
    "an unusable GLMDEPLOY_HOME gives 'internal error: FileNotFoundError'": (
        "tests/test_cli_inputs.py::test_an_unusable_state_directory_is_one_line_and_exit_2",
    ),
    "destroy --yes run twice exits 2": (
        f"{E2E}/test_destroy_semantics.py::test_destroy_with_nothing_to_destroy_exits_0",
        f"{E2E}/test_destroy_semantics.py::test_a_destroy_answered_404_not_found_marks_the_deployment_gone",
    ),
    "logs -f on a deployment destroyed mid-follow exits 7 with a raw 404": (
        f"{E2E}/test_destroy_semantics.py::test_logs_follow_ends_with_exit_0_and_one_line_when_the_instance_goes",
    ),
    "'account lacks credit' exits 7": (
        f"{E2E}/test_destroy_semantics.py::test_an_account_without_credit_exits_8_not_7",
    ),
    "a wrong Vast key is noticed only at create, then up warns an instance may still be billing": (
        "tests/test_check_before_renting.py::test_a_wrong_key_is_caught_before_the_search_and_nothing_is_said_to_bill",
        "tests/test_check_before_renting.py::test_a_401_on_create_says_plainly_that_nothing_was_rented",
    ),
    "a destroy answered 404 not_found marks the deployment orphaned": (
        f"{E2E}/test_destroy_semantics.py::test_a_destroy_answered_404_not_found_marks_the_deployment_gone",
    ),
    "raising --max-price can make a more expensive offer rank first": (
        f"{E2E}/test_inputs.py::test_raising_the_price_cap_never_reorders_the_offers_under_it",
    ),
    "smoke --url: a port that accepts but never answers takes 16 minutes": (
        "tests/test_smoke_bad_targets.py::test_a_silent_server_stops_the_run_after_the_first_check",
    ),
    "smoke --url: health ignores --timeout": (
        "tests/test_smoke_bad_targets.py::test_every_check_honours_the_timeout_against_a_server_that_never_answers[health]",
    ),
    "smoke --url: a closed port prints a 30-line table": (
        "tests/test_smoke_bad_targets.py::test_a_closed_port_is_one_line_and_exit_7",
    ),
    "smoke --url: a plain web server's 404 is 'the key is not enforced'": (
        "tests/test_smoke_bad_targets.py::test_a_plain_web_server_is_not_openai_compatible_not_an_auth_failure",
        "tests/test_smoke_bad_targets.py::test_the_auth_check_alone_reads_404_as_the_wrong_server",
    ),
    "the interrupt test raced a scaled clock (sleep 0.3 s)": (
        f"{E2E}/test_up_lifecycle.py::test_interrupt_during_wait_ready_destroys_and_exits_130",
    ),
}


def doc_rows() -> list[str]:
    """The first column of every row of both tables."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith(("| `", "| no message")):
            rows.append(line.split(" | ")[0].removeprefix("| "))
    return rows


def row_line(fragment: str) -> str:
    [line] = [
        line
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith(("| `", "| no message")) and fragment in line.split(" | ")[0]
    ]
    return line


def documented_exits(fragment: str) -> set[int]:
    """The exit codes a row states: "(exit 4)", "(exit 2, 6 or 7)", "(exit 129/130)", "exit 141"."""
    found = re.search(r"exit ((?:\d+(?:, | or |/))*\d+)", row_line(fragment).split(" | ")[0])
    return {int(n) for n in re.findall(r"\d+", found.group(1))} if found else set()


def test_the_doc_has_both_tables() -> None:
    rows = doc_rows()
    assert len(rows) >= 60, rows
    assert any("exit 141" in r for r in rows) and any("no Vast.ai API key" in r for r in rows)


def test_every_row_of_the_doc_has_a_cli_test() -> None:
    rows = doc_rows()
    missing = [r for r in rows if not any(fragment in r for fragment in ROWS)]
    assert missing == [], f"rows of docs/troubleshooting.md without a test in ROWS: {missing}"
    for fragment in ROWS:
        matches = [r for r in rows if fragment in r]
        assert len(matches) == 1, f"{fragment!r} must name exactly one row, names {matches}"


@cache
def _module(path: str) -> ModuleType:
    file = ROOT / path
    parts = file.relative_to(ROOT).with_suffix("").parts  # tests/faults/x -> tests.faults.x
    # Packages (tests/e2e, tests/faults) import their siblings relatively; plain tests/ modules by path.
    name = ".".join(parts[1:]) if (file.parent / "__init__.py").exists() else parts[-1]
    if name in sys.modules:
        return sys.modules[name]
    if "." in name:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(f"_exit_table_{name}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _param_ids(function: Any) -> set[str]:
    """The ids pytest gives one ``@pytest.mark.parametrize`` (ids=, pytest.param(id=), or from the values)."""
    marks = [m for m in getattr(function, "pytestmark", []) if m.name == "parametrize"]
    assert len(marks) == 1, f"{function.__name__}: one parametrize mark supported, found {len(marks)}"
    mark = marks[0]
    names = mark.args[0].split(",") if isinstance(mark.args[0], str) else list(mark.args[0])
    ids = mark.kwargs.get("ids")
    if isinstance(ids, list | tuple):
        return {str(i) for i in ids}
    out = set()
    for index, value in enumerate(mark.args[1]):
        if hasattr(value, "id") and hasattr(value, "values"):  # pytest.param(...)
            if value.id is not None:
                out.add(value.id)
                continue
            value = value.values if len(names) > 1 else value.values[0]
        values = value if len(names) > 1 else (value,)
        out.add("-".join(_value_id(v, name.strip(), index) for v, name in zip(values, names, strict=True)))
    return out


def _value_id(value: Any, name: str, index: int) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        return str(value)
    return f"{name}{index}"


def _cell_ids() -> set[str]:
    from faults.matrix import CELLS

    return {c.id for c in CELLS}


@pytest.mark.parametrize(
    "node", sorted({n for nodes in [*ROWS.values(), *WHY.values()] for n in nodes}), ids=lambda n: n[6:]
)
def test_every_referenced_test_exists(node: str) -> None:
    path, _, name = node.partition("::")
    function_name, _, param = name.partition("[")
    function = getattr(_module(path), function_name, None)
    assert callable(function), f"{node}: no function {function_name} in {path}"
    if param:
        param = param.removesuffix("]")
        known = _cell_ids() if node.startswith(CELL) else _param_ids(function)
        assert param in known, f"{node}: no parameter id {param!r}; known: {sorted(known)}"


@pytest.mark.parametrize("fragment", [f for f, nodes in ROWS.items() if any(n.startswith(CELL) for n in nodes)])
def test_fault_cells_end_with_the_exit_code_the_row_states(fragment: str) -> None:
    from faults.matrix import CELLS

    by_id = {c.id: c for c in CELLS}
    stated = documented_exits(fragment)
    assert stated, f"the row of {fragment!r} states no exit code"
    for node in ROWS[fragment]:
        if node.startswith(CELL):
            c = by_id[node.removeprefix(CELL + "[").removesuffix("]")]
            assert c.exit in stated, f"{c.id} exits {c.exit}, the doc's row says {sorted(stated)}"
            if c.reason:  # the cell also checks the error line names the row's failure
                assert c.reason in row_line(fragment) or c.reason.replace("_", " ") in row_line(fragment), c
