#!/usr/bin/python3
"""libsrtp, through Debian's python3-pylibsrtp, as the independent SRTP peer of tests/srtp.rs.

Usage: libsrtp_peer.py SUITE
Reads the two keys (base64 key||salt) as the first two lines of stdin: the one it sends with,
then the one it receives with. Then reads lines "p HEX" (protect an RTP packet) or "u HEX"
(unprotect an SRTP packet) and answers each with the resulting packet in hex, or "error".
"""
import base64
import sys

from pylibsrtp import Policy, Session

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


def session(key_line, direction):
    key = base64.b64decode(key_line.strip())
    return Session(policy=Policy(key=key, ssrc_type=direction, srtp_profile=PROFILES[sys.argv[1]]))


tx = session(sys.stdin.readline(), Policy.SSRC_ANY_OUTBOUND)
rx = session(sys.stdin.readline(), Policy.SSRC_ANY_INBOUND)
for line in sys.stdin:
    op, data = line.split()
    try:
        out = tx.protect(bytes.fromhex(data)) if op == "p" else rx.unprotect(bytes.fromhex(data))
        print(out.hex(), flush=True)
    except Exception:
        print("error", flush=True)
