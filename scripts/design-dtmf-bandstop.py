#!/usr/bin/env python3
"""Designs the band-stop the masker applies to agent-bound audio during capture
(src/media/dtmf/bandstop.rs): an elliptic IIR filter that removes 665-1705 Hz (every DTMF
row and column frequency, +/-4%) by at least 50 dB and passes below 610 Hz and above
1790 Hz within 1 dB, at 8 kHz. Prints the second-order sections as Rust constants.

Run: pip install scipy==1.17.1 && python3 scripts/design-dtmf-bandstop.py
"""
from scipy import signal

FS = 8000
STOP = [665, 1705]   # 697 Hz - 4.5% .. 1633 Hz + 4.4%
PASS = [610, 1790]
RIPPLE_DB = 1.0
ATTENUATION_DB = 50.0

order, wn = signal.ellipord(PASS, STOP, RIPPLE_DB, ATTENUATION_DB, fs=FS)
sos = signal.ellip(order, RIPPLE_DB, ATTENUATION_DB, wn, btype="bandstop", output="sos", fs=FS)
print(f"// ellip(order {order}, {RIPPLE_DB} dB ripple, {ATTENUATION_DB} dB stop), edges {[round(float(w), 1) for w in wn]} Hz")
print(f"const SECTIONS: [[f64; 5]; {len(sos)}] = [")
for b0, b1, b2, a0, a1, a2 in sos:
    assert a0 == 1.0
    print(f"    [{b0:.9e}, {b1:.9e}, {b2:.9e}, {a1:.9e}, {a2:.9e}],")
print("];")
