"""`weir serve` and `weir check-config` parse without loading any plugin's commands."""

from __future__ import annotations

from proxy.cli import CORE_COMMANDS, build_parser


def test_the_core_commands_parse_with_no_plugin_commands() -> None:
    parser, commands = build_parser(with_plugins=False)
    assert set(commands) == set(CORE_COMMANDS) == {"serve", "check-config"}
    args = parser.parse_args(["serve", "--port", "8081", "--workers", "2"])
    assert (args.command, args.port, args.workers) == ("serve", 8081, 2)


def test_every_other_command_still_comes_from_the_plugins() -> None:
    _, commands = build_parser()
    assert "serve" in commands and "user add" in commands
