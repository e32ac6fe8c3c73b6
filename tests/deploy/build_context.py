"""Writes the build context of deploy/Dockerfile to stdout as a tar stream: the repository
filtered by deploy/Dockerfile.dockerignore, as BuildKit does (it reads <Dockerfile>.dockerignore).

tests/deploy/compose.sh builds with Docker's legacy builder (BuildKit may reach a registry),
which reads only a .dockerignore at the root of the context; piping this tar to
`docker build -` gives it the same files a BuildKit build (Compose v2 on a laptop) sends.

Patterns: dockerignore's, relative to the root: `*` and `?` within one path component, `**`
across any number, `!pattern` re-includes, a matching directory excludes all below it.
"""
import os
import re
import sys
import tarfile


def compile_pattern(pat):
    pat = pat.strip("/")
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pat.startswith("**", i):
            out += ".*"
            i += 2
        elif pat[i] == "*":
            out += "[^/]*"
            i += 1
        elif pat[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pat[i])
            i += 1
    return re.compile(out + "(?:/.*)?$")


def read_rules(path):
    rules = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            rules.append((keep, compile_pattern(line.lstrip("!").strip())))
    return rules


def excluded(rel, rules):
    out = False
    for keep, rx in rules:
        if rx.match(rel):
            out = not keep
    return out


def main(root, ignore_file):
    rules = read_rules(ignore_file)
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
        for top, dirs, files in os.walk(root):
            reltop = os.path.relpath(top, root)
            reltop = "" if reltop == "." else reltop + "/"
            # Directories excluded outright are not walked (no ! rule re-includes below them
            # in our file); sorted for a reproducible stream and layer cache.
            dirs[:] = sorted(d for d in dirs if not excluded(reltop + d, rules))
            for name in sorted(files):
                rel = reltop + name
                if not excluded(rel, rules):
                    info = tar.gettarinfo(os.path.join(top, name), rel)
                    # The same bytes give the same layer: no owner, fixed time.
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mtime = 0
                    if info.isreg():
                        with open(os.path.join(top, name), "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
