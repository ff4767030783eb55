import pytest

from edgetvm.deploy.boards import BoardConfig, boards_file, load_boards, select_board
from edgetvm.errors import BoardError, InputError

BOARDS = """
[boards.kitchen]
host = "kitchen-pi"
target = "rpi4"
key_file = "~/.ssh/pi"

[boards.garage]
host = "10.0.0.9"
port = 2222
user = "ubuntu"
target = "rpi5"
"""


def test_load_and_select(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config
    path = tmp_path / "boards.toml"
    path.write_text(BOARDS)
    boards = load_boards(path)
    assert boards["garage"] == BoardConfig(name="garage", host="10.0.0.9", port=2222, user="ubuntu", target="rpi5")
    assert select_board(None, "rpi5", boards).name == "garage"
    assert select_board("kitchen", "rpi5", boards).name == "kitchen"
    assert select_board(None, "rpi3", boards) is None  # nothing configured: the emulated board
    assert select_board("emulated", "rpi4", boards) is None
    with pytest.raises(BoardError, match="board 'attic' is not in the boards file; known boards: kitchen, garage"):
        select_board("attic", "rpi4", boards)


def test_ssh_config_alias_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        "Host kitchen-pi\n  HostName 192.0.2.10\n  Port 2200\n  User pi\n  IdentityFile ~/.ssh/kitchen\n"
    )
    board = BoardConfig(name="kitchen", host="kitchen-pi", target="rpi4").resolved()
    assert (board.host, board.port, board.user) == ("192.0.2.10", 2200, "pi")
    assert board.key_file.endswith("/.ssh/kitchen")
    assert board.remote_workdir == "/home/pi/edgetvm"


@pytest.mark.parametrize(
    "text, words",
    [
        ("[boards.x]\nhost = 'a'\n", r"missing \['target'\]"),
        ("[boards.x]\nhost = 'a'\ntarget = 'rpi4'\ncolour = 'red'\n", r"unknown \['colour'\]"),
        ("[boards.emulated]\nhost = 'a'\ntarget = 'rpi4'\n", "reserved"),
        ("[boards.x]\nhost = 'a'\ntarget = 'rpi4'\nport = 70000\n", "port must be 1..65535"),
        ("[boards\n", "not valid TOML"),
    ],
)
def test_bad_boards_files(tmp_path, text, words):
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=words):
        load_boards(path)


def test_boards_file_location(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGETVM_BOARDS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert boards_file() == tmp_path / "edgetvm" / "boards.toml"
    monkeypatch.setenv("EDGETVM_BOARDS", "/etc/b.toml")
    assert str(boards_file()) == "/etc/b.toml"
    assert str(boards_file("x.toml")) == "x.toml"
    with pytest.raises(InputError, match="no such file"):
        load_boards(tmp_path / "none.toml", must_exist=True)
