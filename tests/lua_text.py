"""The Lua scripts as they ship: a script's "--@include lib/x.lua" lines replaced by that file
(relative to the script, without its last newline), exactly as cmake/embed.cmake embeds them
(tests/lua checks the bytes agree). Every test that loads a script itself loads it through
here, so it runs what the binaries run."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(ROOT, "lua")
INCLUDE = re.compile(r"\n--@include ([^\n]*)")


def expand(path):
    """The shipped text of the script file at path."""
    with open(path, "rb") as fh:
        text = fh.read().decode()

    def lib(m):
        with open(os.path.join(os.path.dirname(path), m.group(1)), "rb") as fh:
            body = fh.read().decode()
        return "\n" + (body[:-1] if body.endswith("\n") else body)
    return INCLUDE.sub(lib, text)


def script(name, lua_dir=LUA):
    """The shipped text of lua/<name>.lua ("room_join")."""
    return expand(os.path.join(lua_dir, name + ".lua"))
