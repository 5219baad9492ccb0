"""server.toml: parsing, defaults, overrides and clear errors."""

import pytest

from server.config import init_data_dir, load_config, parse_listen, parse_size, with_overrides
from shared.errors import UsageError


@pytest.mark.parametrize("text, size", [
    ("123", 123), (123, 123), ("64MiB", 64 << 20), ("1.5 GiB", 3 << 29), ("2G", 2 << 30),
    ("10kb", 10 << 10), ("7B", 7),
])
def test_parse_size(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-5", "5 XB", "1,5G"])
def test_parse_size_rejects_nonsense(text) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:8420", ("127.0.0.1", 8420)), ("[::1]:9000", ("::1", 9000)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_listen(text, parsed) -> None:
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["8420", "host:", ":80", "host:99999", "host:http"])
def test_parse_listen_rejects_nonsense(text) -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_listen(text)


def test_init_writes_a_config_that_loads(tmp_path) -> None:
    config = init_data_dir(tmp_path / "d", listen="127.0.0.1:9999")
    again = load_config(tmp_path / "d")
    assert again == config
    assert config.listen_port == 9999 and config.server_id.startswith("cairn-")
    assert config.vaults_dir.is_dir() and config.signing_key_path.is_file()
    assert config.db_path.is_file()


def test_init_refuses_a_used_folder(tmp_path) -> None:
    init_data_dir(tmp_path / "d")
    with pytest.raises(UsageError, match="already"):
        init_data_dir(tmp_path / "d")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        init_data_dir(tmp_path / "other")


def test_load_config_reads_every_setting(tmp_path) -> None:
    init_data_dir(tmp_path / "d")
    (tmp_path / "d" / "server.toml").write_text(
        '[server]\nlisten = "0.0.0.0:1234"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n'
        'server_id = "x"\n[limits]\nmax_object_size = "64MiB"\n'
        '[auth]\ntoken_lifetime_days = 0.5\nsign_in_max_failures = 2\n'
        'sign_in_window_seconds = 10\n[storage]\nfsync = false\n')
    config = load_config(tmp_path / "d")
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 1234)
    assert config.tls_cert == tmp_path / "d" / "c.pem" and config.scheme == "https"
    assert config.max_object_size == 64 << 20 and config.token_lifetime == 43200
    assert config.sign_in_max_failures == 2 and config.sign_in_window == 10.0
    assert not config.fsync and config.server_id == "x"


@pytest.mark.parametrize("toml, message", [
    ("[server\n", "not valid TOML"),
    ('[server]\nlisten = 5\n', "must be a str"),
    ('[storage]\nfsync = "yes"\n', "must be a bool"),
    ('[limits]\nmax_object_size = "tiny"\n', "not a size"),
    ('[limits]\nmax_object_size = "1KiB"\n', "at least 1MiB"),
    ('[server]\ntls_cert = "c.pem"\n', "both a certificate and its key"),
    ('server = 3\n', "must be a table"),
])
def test_load_config_explains_bad_settings(tmp_path, toml, message) -> None:
    init_data_dir(tmp_path / "d")
    (tmp_path / "d" / "server.toml").write_text(toml)
    with pytest.raises(UsageError, match=message):
        load_config(tmp_path / "d")


def test_missing_data_folder_says_how_to_create_one(tmp_path) -> None:
    with pytest.raises(UsageError, match="cairn-server init"):
        load_config(tmp_path / "nothing")


def test_overrides_are_checked(tmp_path) -> None:
    config = init_data_dir(tmp_path / "d")
    assert with_overrides(config, listen_port=1, fsync=None).listen_port == 1
    with pytest.raises(UsageError):
        with_overrides(config, token_lifetime=5)
