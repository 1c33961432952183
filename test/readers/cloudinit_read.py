"""Reads user-data the way cloud-init does, with Debian's installed cloud-init (22.4), and
prints what it read as JSON. Run it with the interpreter cloud-init runs under
(/usr/bin/python3, which has /usr/lib/python3/dist-packages/cloudinit).

- MIME: cloudinit.user_data.UserDataProcessor.process (the same split, decoding and
  content-type guessing as at boot);
- which handler claims which part: the default user-data handlers of cloudinit.stages.Init
  (_default_handlers), registered in a ContentHandlers as _do_handlers does, walked with
  cloudinit.handlers.walk / walker_callback;
- YAML: each cloud-config part is loaded by the cloud-config handler itself
  (cloudinit.util.load_yaml) and merged with the part's Merge-Type, as at boot;
- schema: the merged config is validated with jsonschema against the schema file given
  (the current schema in ../shared/peer-data/cloudinit/), with cloud-init's own validator
  class (cloudinit.config.schema.get_jsonschema_validator: bytes count as strings).
Every WARNING cloud-init logs while reading is reported: cloud-init drops a part it fails
to merge with only a warning.

Usage: /usr/bin/python3 cloudinit_read.py <schema.json> < user-data
Output: {"parts": [{"contentType", "filename", "handler"}], "config": <merged, JSON-safe>,
         "partConfigs": [<each cloud-config part as loaded>], "schemaErrors": [...], "warnings": [...]}
bytes are written as {"__bytes__": <base64>}, dates as {"__date__": <iso>}, other
non-JSON values as {"__repr__": ...}.
"""
import base64
import datetime
import json
import logging
import sys
import tempfile

from cloudinit import handlers, helpers, util
from cloudinit.config.schema import get_jsonschema_validator
from cloudinit.handlers.boot_hook import BootHookPartHandler
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.handlers.jinja_template import JinjaTemplatePartHandler
from cloudinit.handlers.shell_script import ShellScriptPartHandler
from cloudinit.handlers.shell_script_by_frequency import ShellScriptByFreqPartHandler
from cloudinit.settings import PER_ALWAYS, PER_INSTANCE, PER_ONCE
from cloudinit.user_data import UserDataProcessor


class InstanceOnly(object):
    """All of a datasource the handlers use: an instance id for their per-instance folders."""

    def get_instance_id(self):
        return 'i-cloudinit-read'


class Warnings(logging.Handler):
    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append('%s: %s' % (record.name, record.getMessage()))


def safe(value):
    if isinstance(value, bytes):
        return {'__bytes__': base64.b64encode(value).decode('ascii')}
    if isinstance(value, (datetime.date, datetime.datetime)):
        return {'__date__': value.isoformat()}
    if isinstance(value, dict):
        return {str(k): safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return {'__repr__': repr(value)}


def main():
    schema = json.load(open(sys.argv[1]))
    raw = sys.stdin.buffer.read()
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    logging.getLogger().setLevel(logging.WARNING)

    tmp = tempfile.mkdtemp(prefix='cloudinit-read-')
    paths = helpers.Paths({'cloud_dir': tmp, 'run_dir': tmp}, ds=InstanceOnly())
    message = UserDataProcessor(paths).process(raw)

    opts = {'paths': paths, 'datasource': None}
    cloud_config = CloudConfigPartHandler(**opts)
    shell_script = ShellScriptPartHandler(**opts)
    defaults = [
        cloud_config,
        shell_script,
        ShellScriptByFreqPartHandler(PER_ALWAYS, **opts),
        ShellScriptByFreqPartHandler(PER_INSTANCE, **opts),
        ShellScriptByFreqPartHandler(PER_ONCE, **opts),
        BootHookPartHandler(**opts),
        JinjaTemplatePartHandler(**opts, sub_handlers=[cloud_config, shell_script]),
    ]
    content_handlers = helpers.ContentHandlers()
    for mod in defaults:
        content_handlers.register(mod, overwrite=False)

    parts = []
    part_configs = []
    claimed = {}

    # Record which handler each part reaches (what walker_callback decides), and what the
    # cloud-config handler loads from it, without changing what the handler does.
    for ctype, mod in list(content_handlers.items()):
        def wrap(original, name):
            def handle_part(data, ctype, filename, payload, *rest):
                if ctype not in (handlers.CONTENT_START, handlers.CONTENT_END):
                    claimed[filename] = name
                    if name == 'CloudConfigPartHandler':
                        part_configs.append(safe(util.load_yaml(payload)))
                return original(data, ctype, filename, payload, *rest)
            return handle_part
        if not getattr(mod.handle_part, '_wrapped', False):
            mod.handle_part = wrap(mod.handle_part, type(mod).__name__)
            mod.handle_part._wrapped = True

    for part in message.walk():
        if part.get_content_maintype() == 'multipart':
            continue
        parts.append({'contentType': part.get_content_type(), 'filename': part.get_filename()})

    data = None
    for _, mod in content_handlers.items():
        if mod not in content_handlers.initialized:
            handlers.call_begin(mod, data, PER_INSTANCE)
            content_handlers.initialized.append(mod)
    part_data = {
        'handlers': content_handlers,
        'handlerdir': tmp,
        'data': data,
        'frequency': PER_INSTANCE,
        'handlercount': 0,
        'excluded': [],
    }
    handlers.walk(message, handlers.walker_callback, data=part_data)
    merged = cloud_config.cloud_buf
    for _, mod in content_handlers.items():
        if mod in content_handlers.initialized:
            content_handlers.initialized.remove(mod)
            handlers.call_end(mod, data, PER_INSTANCE)

    for p in parts:
        p['handler'] = claimed.get(p['filename'])

    validator_cls, format_checker = get_jsonschema_validator()
    validator = validator_cls(schema, format_checker=format_checker())
    schema_errors = sorted(
        '%s: %s' % ('.'.join(str(x) for x in e.path) or '<root>', e.message)
        for e in validator.iter_errors(merged if merged is not None else {})
    )
    json.dump({
        'parts': parts,
        'config': safe(merged),
        'partConfigs': part_configs,
        'schemaErrors': schema_errors,
        'warnings': warnings.messages,
    }, sys.stdout, sort_keys=True)


if __name__ == '__main__':
    main()
