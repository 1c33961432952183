# -*- coding: utf-8 -*-
"""Reads user-data the way CernVM's amiconfig does, and prints what it read as JSON.

amiconfig (cernvm/amiconfig rpath/amiconfig/userdata.py) hands the *whole raw* user-data,
not one MIME part, to INIFileStub.sanitize: split on "\\n", keep every line that
RawConfigParser.SECTCRE matches and, once a section line has been seen, every line that
RawConfigParser.OPTCRE matches (both matched at the start of the raw line). The kept lines
go to ConfigParser.readfp, and plugins read their section as the raw dict
(UserData.getSection returns self._sections[name]: no interpolation, no DEFAULT values).
The cernvm plugin (cernvm/amiconfig plugins/cernvm.py) splits `users` on "," and each entry
on ":" into exactly (username, group, password), and `environment` on "," then "=" into
exactly (var, val); anything else raises ValueError and stops the plugin.

Runs under Python 2.7 (amiconfig's interpreter: its own ConfigParser) and Python 3, where
configparser.RawConfigParser(strict=False, interpolation=None) comes close. Where the two
differ (noted so a test can tell): Python 3 keeps indented lines as continuations only by
indentation level and allows empty lines in values (sanitize drops both kinds of lines, so
no difference here); Python 2 strips a ";" comment only after whitespace, Python 3 strips
none unless asked (inline_comment_prefixes is set to ";" below to match); Python 2 turns a
value of exactly '""' into ''; Python 3 does not (mimicked below); Python 3's section
proxies mix DEFAULT values in (read _sections directly, as amiconfig does); Python 2 skips
lines starting with "rem"/"REM" + whitespace (mimicked below, never kept by sanitize anyway
unless they hold ":" or "=").

Usage: python amiconfig_read.py < user-data   ->  {"interpreter", "kept", "sections", "order",
"cernvm": {"users": [[name, group, password]...], "environment": [[var, val]...]}, "errors"}
"""
import json
import re
import sys

PY2 = sys.version_info[0] == 2

# Python 2.7's RawConfigParser.SECTCRE / OPTCRE, verbatim (the patterns sanitize uses).
SECTCRE = re.compile(r'\[(?P<header>[^]]+)\]')
OPTCRE = re.compile(r'(?P<option>[^:=\s][^:=]*)\s*(?P<vi>[:=])\s*(?P<value>.*)$')


def sanitize(text):
    """INIFileStub.sanitize, line for line."""
    kept = []
    found_section = False
    for line in text.split('\n'):
        if SECTCRE.match(line):
            found_section = True
            kept.append(line)
        if found_section and OPTCRE.match(line):
            kept.append(line)
    return kept


class Stub(object):
    """INIFileStub.readline: the kept lines, then None (an empty kept line would end reading too)."""

    def __init__(self, lines):
        self.lines = lines
        self.pos = 0
        self.name = 'EC2UserData'

    def readline(self):
        if self.pos < len(self.lines):
            self.pos += 1
            return self.lines[self.pos - 1]
        return None

    def __iter__(self):  # Python 3's read_file iterates
        line = self.readline()
        while line is not None:
            yield line
            line = self.readline()


def parse(lines):
    if PY2:
        import ConfigParser  # noqa: N813 (amiconfig's own reader)
        parser = ConfigParser.ConfigParser()
        parser.readfp(Stub(lines))
        sections = parser._sections
    else:
        import configparser
        parser = configparser.RawConfigParser(strict=False, interpolation=None, inline_comment_prefixes=(';',), default_section='DEFAULT')
        # Python 2 skips "rem " lines; keep the same lines out.
        lines = [l for l in lines if not (l[:1] in 'rR' and l.split(None, 1)[0].lower() == 'rem')]
        parser.read_file(Stub(lines), source='EC2UserData')
        sections = parser._sections
    out = {}
    order = []
    for name, options in sections.items():
        order.append(name)
        values = {}
        for key, value in options.items():
            if key == '__name__':
                continue
            if not PY2 and value == '""':
                value = ''
            values[key] = value
        out[name] = values
    return out, order


def cernvm_plugin(section):
    """What plugins/cernvm.py makes of `users` and `environment` (raises ValueError as it does)."""
    result = {}
    if 'users' in section:
        users = []
        for entry in section['users'].split(','):
            (username, group, password) = entry.split(':')
            users.append([username, group, password])
        result['users'] = users
    if 'environment' in section:
        env = []
        for entry in section['environment'].split(','):
            (var, val) = entry.split('=')
            env.append([var, val])
        result['environment'] = env
    return result


def main():
    data = sys.stdin.read() if PY2 else sys.stdin.buffer.read().decode('utf-8')
    if PY2:
        data = data.decode('utf-8')
    kept = sanitize(data)
    errors = []
    sections, order = {}, []
    try:
        sections, order = parse([l.encode('utf-8') for l in kept] if PY2 else kept)
    except Exception as e:  # what amiconfig would die of
        errors.append('%s: %s' % (type(e).__name__, e))
    cernvm = None
    for name in order:  # getSection('cernvm', lower=True)
        if name.lower() == 'cernvm':
            try:
                cernvm = cernvm_plugin(sections[name])
            except ValueError as e:
                errors.append('cernvm plugin: ValueError: %s' % e)
    def text(v):
        return v.decode('utf-8') if PY2 and isinstance(v, str) else v
    json.dump({
        'interpreter': 'python%d.%d' % sys.version_info[:2],
        'kept': [text(l) for l in (kept if not PY2 else [l.encode('utf-8') for l in kept])],
        'sections': dict((text(k), dict((text(a), text(b)) for a, b in v.items())) for k, v in sections.items()),
        'order': [text(n) for n in order],
        'cernvm': cernvm,
        'errors': errors,
    }, sys.stdout, sort_keys=True)


if __name__ == '__main__':
    main()
