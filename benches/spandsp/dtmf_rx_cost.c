/* spandsp's DTMF receiver over the same 8 kHz audio as tonewall's `dsp_cost` example, for
 * instruction counts under `valgrind --tool=callgrind` (see benches/README.md).
 * Usage: dtmf_rx_cost FILE.s16  (raw 16-bit little-endian mono); prints the digits found.
 * Build: gcc -O2 -o dtmf_rx_cost dtmf_rx_cost.c $(pkg-config --cflags --libs spandsp) */
#include <stdio.h>
#include <stdlib.h>
#include <inttypes.h>
#include <spandsp.h>

static int found = 0;

static void on_digits(void *user, const char *digits, int len) {
    (void) user;
    for (int i = 0; i < len; i++) putchar(digits[i]);
    found += len;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s FILE.s16\n", argv[0]); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    dtmf_rx_state_t *rx = dtmf_rx_init(NULL, on_digits, NULL);
    int16_t block[160];
    size_t n;
    while ((n = fread(block, sizeof(int16_t), 160, f)) > 0) dtmf_rx(rx, block, (int) n);
    fclose(f);
    printf("\n%d digits\n", found);
    dtmf_rx_free(rx);
    return 0;
}
