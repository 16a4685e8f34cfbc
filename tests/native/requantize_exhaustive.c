/*
 * Exhaustive check that the vectorised single-precision re-quantisation in services/compressor/_jpegdct.c gives the
 * exact integer result, floor((2 |c| q_src + q_dst - 1) / (2 q_dst)) (round to nearest, ties towards zero), for every
 * pair of table entries 1 <= q_src <= q_dst <= 255 and every |c| from 0 to a little past the bound where the float
 * path hands over to integers (both signs). About 400 million blocks; 1.5 minutes on our machine. Not part of the
 * pytest suite (too slow for it); run it after touching the re-quantisation code:
 *
 *   gcc -O2 -ffp-contract=off $(python3-config --includes) -Iservices/compressor \
 *       tests/native/requantize_exhaustive.c $(python3-config --ldflags --embed) \
 *       -ljpeg -Wl,-rpath,$(python3-config --prefix)/lib -o /tmp/requantize_exhaustive && /tmp/requantize_exhaustive
 *
 * (The module's source is included whole so its static functions can be called; Python is linked only because
 * the module's glue is compiled in: nothing here calls into the interpreter.)
 */
#include "_jpegdct.c"

int main(void) {
    long mismatches = 0, checked = 0;
    JQUANT_TBL source;
    UINT16 target[DCTSIZE2];
    requantizer r;
    unsigned int qs, qd;
    int k, a;
    for (qs = 1; qs <= 255; qs++) {
        for (qd = qs; qd <= 255; qd++) {
            for (k = 0; k < DCTSIZE2; k++) {
                source.quantval[k] = (UINT16)qs;
                target[k] = (UINT16)qd;
            }
            prepare(&r, &source, target);
            for (a = 0; a <= r.bound[0] + 3 && a < 32768; a++) {
                JCOEF fast[DCTSIZE2], exact[DCTSIZE2];
                for (k = 0; k < DCTSIZE2; k++) fast[k] = exact[k] = (JCOEF)((k & 1) ? -a : a);
                requantize_block(&r, fast);
                for (k = 0; k < DCTSIZE2; k++) {
                    long q = (2L * a * qs + qd - 1) / (2L * qd);
                    exact[k] = (JCOEF)((k & 1) ? -q : q);
                }
                checked++;
                if (memcmp(fast, exact, sizeof fast) != 0) {
                    if (++mismatches <= 5)
                        printf("q_src %u q_dst %u |c| %d: %d, exact %d\n", qs, qd, a, fast[0], exact[0]);
                }
            }
        }
    }
    printf("%ld blocks checked, %ld mismatches\n", checked, mismatches);
    return mismatches != 0;
}
