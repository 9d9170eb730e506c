/* spandsp's DTMF receiver as an independent judge for the tests (tests/common/judges.rs).
 * Reads raw 16-bit little-endian mono 8 kHz audio on stdin and prints one line per digit:
 * "<sample index at the end of the 20 ms block that reported it> <digit>", then "end <samples>"
 * so the caller knows the judge read the whole input. spandsp's defaults throughout
 * (dtmf_rx_init: -42 dBm0 threshold, 8 dB normal and 4 dB reverse twist).
 * Build: gcc -O2 -o spandsp_dtmf spandsp_dtmf.c $(pkg-config --cflags --libs spandsp) */
#include <stdio.h>
#include <stdint.h>
#include <inttypes.h>
#include <spandsp.h>

static uint64_t samples = 0;

static void on_digits(void *user, const char *digits, int len) {
    (void) user;
    for (int i = 0; i < len; i++) printf("%" PRIu64 " %c\n", samples, digits[i]);
}

int main(void) {
    dtmf_rx_state_t *rx = dtmf_rx_init(NULL, on_digits, NULL);
    if (!rx) { fprintf(stderr, "dtmf_rx_init failed\n"); return 2; }
    int16_t block[160];
    size_t n;
    while ((n = fread(block, sizeof(int16_t), 160, stdin)) > 0) {
        samples += n;
        dtmf_rx(rx, block, (int) n);
    }
    printf("end %" PRIu64 "\n", samples);
    dtmf_rx_free(rx);
    return 0;
}
