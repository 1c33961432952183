"""µCernVM's user-data reader: a line-for-line port of cernvm-micro's
packages.d/extras/src/parse_user_data.cc, which the bootloader runs as
`cat ${USER_DATA} | parse_user_data > ${UCONTEXT_TMP}; . ${UCONTEXT_TMP}` (scripts.d/06context).

It reads the raw bytes one at a time; a line ends at "\\n" only (a "\\r" stays part of the
line, so "[ucernvm-begin]\\r" is no marker); lines are compared whole to "[ucernvm-begin]"
and "[ucernvm-end]"; reading stops at the first end marker; a last line without "\\n" is
never looked at. Inside the block each line is split at the first "=" (lines without one
are skipped); a value that upper-cases to YES/ON/TRUE becomes 1, NO/OFF/FALSE becomes 0;
the key is upper-cased (ASCII toupper) and printed as `_UCONTEXT_<KEY>=<value>`.

Usage: python3 ucernvm_parse.py < user-data > ucontext   (then source it with a POSIX sh)
"""
import sys


def parse(data: bytes) -> bytes:
    out = []
    in_ucontext = False
    line = b''
    for byte in data:
        c = bytes([byte])
        if c != b'\n':
            line += c
            continue
        if line == b'[ucernvm-begin]':
            in_ucontext = True
            line = b''
            continue
        if line == b'[ucernvm-end]':
            break
        if in_ucontext:
            keyval = line.split(b'=', 1)
            if len(keyval) == 2:
                key, value = keyval
                if value.upper() in (b'YES', b'ON', b'TRUE'):
                    value = b'1'
                if value.upper() in (b'NO', b'OFF', b'FALSE'):
                    value = b'0'
                out.append(b'_UCONTEXT_' + key.upper() + b'=' + value + b'\n')
        line = b''
    return b''.join(out)


if __name__ == '__main__':
    sys.stdout.buffer.write(parse(sys.stdin.buffer.read()))
