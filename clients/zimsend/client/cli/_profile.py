"""Where the user commands find their credentials.

`zimsend login` writes a profile (base URL, client id, API key) into
`$XDG_CONFIG_HOME/zimsend/config.toml` (default `~/.config/zimsend/`), the file mode 600 and
its folder 700: it holds a secret. Every command then reads, in this order: the environment
(ZIMSEND_BASE_URL, ZIMSEND_CLIENT_ID, ZIMSEND_API_KEY each win on their own, so CI jobs need
no file), then the profile chosen by `--profile`, else ZIMSEND_PROFILE, else the file's
`default_profile`, else `default`.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Profile", "ProfileError", "config_path", "load_profile", "save_profile"]

ENV = {
    "base_url": "ZIMSEND_BASE_URL",
    "client_id": "ZIMSEND_CLIENT_ID",
    "api_key": "ZIMSEND_API_KEY",
}


class ProfileError(Exception):
    """No usable credentials: the message says how to get some."""


@dataclass(frozen=True)
class Profile:
    name: str
    base_url: str
    client_id: str
    api_key: str


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "zimsend" / "config.toml"


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(
            f"{path} is not valid TOML ({exc}); fix it or run `zimsend login`"
        ) from exc


def load_profile(name: str | None = None) -> Profile:
    path = config_path()
    data = _read(path)
    chosen = name or os.environ.get("ZIMSEND_PROFILE") or data.get("default_profile") or "default"
    stored = dict(data.get("profiles", {}).get(chosen, {}))
    if name and not stored and name != "default":
        raise ProfileError(f"no profile {name!r} in {path}; run `zimsend login --profile {name}`")
    values = {key: os.environ.get(var) or stored.get(key, "") for key, var in ENV.items()}
    missing = [ENV[k] for k in ("client_id", "api_key") if not values[k]]
    if missing:
        raise ProfileError(f"not logged in: run `zimsend login` (or set {' and '.join(missing)})")
    return Profile(
        chosen,
        values["base_url"] or "http://127.0.0.1:8080",
        values["client_id"],
        values["api_key"],
    )


def save_profile(profile: Profile, *, make_default: bool) -> Path:
    """Write `profile` into the config file (other profiles kept), mode 600, atomically."""
    path = config_path()
    data = _read(path)
    profiles = dict(data.get("profiles", {}))
    profiles[profile.name] = {
        "base_url": profile.base_url,
        "client_id": profile.client_id,
        "api_key": profile.api_key,
    }
    default = (
        profile.name if make_default or not data.get("default_profile") else data["default_profile"]
    )
    lines = [
        "# Written by `zimsend login`. Holds API keys: keep it mode 600.",
        f"default_profile = {_toml(default)}",
        "",
    ]
    for name, values in sorted(profiles.items()):
        lines.append(f"[profiles.{_toml(name)}]")
        lines += [f"{key} = {_toml(str(value))}" for key, value in sorted(values.items())]
        lines.append("")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    tmp.replace(path)
    return path


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes with \\uXXXX are valid TOML)."""
    return json.dumps(value, ensure_ascii=True)
