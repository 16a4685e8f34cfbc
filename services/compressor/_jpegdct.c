/*
 * JPEG -> quality-q JPEG in the DCT domain, with libjpeg(-turbo)'s transcoding API.
 *
 * Why: turning a JPEG into a quality-50 JPEG through pixels costs an entropy decode, dequantisation, inverse DCT,
 * chroma upsampling and colour conversion, then all of it backwards. The quantised DCT coefficients are already in
 * the file: read them (jpeg_read_coefficients), re-quantise each from the source table to the target table
 * (round(c * q_src / q_dst)) and write them (jpeg_write_coefficients). No pixel is ever made. See
 * docs/jpeg-fast-path.md for the rules and the measurements.
 *
 * requantize(data: bytes, quality: int, max_pixels: int) -> bytes
 *   raises NotEligible(reason) for inputs this path does not handle (the caller uses the pixel path), and
 *   JpegError(message) when libjpeg finds the data corrupt (a warning counts: truncated data, bad markers).
 *   The GIL is released for all the work. libjpeg reports errors through our error manager, which longjmps back
 *   here: nothing calls exit(). The input is read through jpeg_mem_src, which never reads past the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Progressive files can hold any number of scans, each a full pass over the coefficients; a hostile file with
 * thousands of tiny scans costs CPU out of all proportion to its size. TurboJPEG caps scans the same way. */
#define MAX_SCANS 500

#define ICC_MARKER (JPEG_APP0 + 2)
#define EXIF_MARKER (JPEG_APP0 + 1)

typedef enum { OK = 0, NOT_ELIGIBLE, JPEG_ERROR, OUT_OF_MEMORY } outcome;

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    outcome failure; /* what the longjmp means */
    char message[JMSG_LENGTH_MAX + 64];
} error_manager;

typedef struct {
    struct jpeg_progress_mgr pub;
    error_manager *errors;
} scan_limiter;

static PyObject *NotEligibleError;
static PyObject *JpegDataError;

/* The standard tables of ITU-T T.81 Annex K (natural order), which libjpeg's jpeg_set_quality scales: the same
 * tables Pillow's pixel path writes. */
static const unsigned int STD_LUMINANCE[DCTSIZE2] = {
    16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,  14, 13, 16, 24, 40,  57,
    69, 56, 14, 17, 22,  29,  51,  87,  80, 62, 18, 22, 37,  56,  68,  109, 103, 77, 24, 35, 55, 64,
    81, 104, 113, 92, 49, 64, 78,  87,  103, 121, 120, 101, 72, 92, 95, 98,  112, 100, 103, 99};
static const unsigned int STD_CHROMINANCE[DCTSIZE2] = {
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99,
    99, 99, 47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99};

static void fail_with(j_common_ptr cinfo, outcome failure) {
    error_manager *errors = (error_manager *)cinfo->err;
    errors->failure = failure;
    longjmp(errors->jump, 1);
}

static void on_error(j_common_ptr cinfo) {
    error_manager *errors = (error_manager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, errors->message);
    fail_with(cinfo, cinfo->err->msg_code == JERR_OUT_OF_MEMORY ? OUT_OF_MEMORY : JPEG_ERROR);
}

/* Warnings (msg_level -1) mean corrupt data: libjpeg would carry on with made-up coefficients (a truncated file
 * ends in grey). We stop instead and let the caller decide with the pixel path. Trace messages are ignored. */
static void on_message(j_common_ptr cinfo, int msg_level) {
    if (msg_level < 0) {
        error_manager *errors = (error_manager *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, errors->message);
        fail_with(cinfo, JPEG_ERROR);
    }
}

static void on_output_message(j_common_ptr cinfo) { (void)cinfo; }

static void on_progress(j_common_ptr cinfo) {
    if (!cinfo->is_decompressor) return;
    if (((j_decompress_ptr)cinfo)->input_scan_number > MAX_SCANS) {
        error_manager *errors = ((scan_limiter *)cinfo->progress)->errors;
        snprintf(errors->message, sizeof errors->message, "more than %d scans", MAX_SCANS);
        fail_with(cinfo, NOT_ELIGIBLE);
    }
}

static void decline(j_common_ptr cinfo, const char *reason) {
    error_manager *errors = (error_manager *)cinfo->err;
    snprintf(errors->message, sizeof errors->message, "%s", reason);
    fail_with(cinfo, NOT_ELIGIBLE);
}

/* --- EXIF / XMP orientation -------------------------------------------------------------------------------------
 * The pixel path turns the pixels upright (Pillow's exif_transpose) and drops the tag; this path cannot without
 * lossless DCT-domain rotations, so it declines any orientation other than 1. Pillow reads the orientation from
 * the EXIF IFD0 tag 0x0112 and, when EXIF has none, from XMP's tiff:Orientation; both are looked at here. Every
 * read is bounds-checked against the marker's length; a malformed EXIF block is declined (the pixel path decides
 * what it means). */

static unsigned int read16(const JOCTET *p, int little) {
    return little ? (unsigned int)(p[0] | (p[1] << 8)) : (unsigned int)((p[0] << 8) | p[1]);
}

static unsigned long read32(const JOCTET *p, int little) {
    return little ? ((unsigned long)p[0] | ((unsigned long)p[1] << 8) | ((unsigned long)p[2] << 16) |
                     ((unsigned long)p[3] << 24))
                  : (((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) |
                     (unsigned long)p[3]);
}

/* 1 upright or no tag, 0 another orientation, -1 malformed. */
static int exif_upright(const JOCTET *data, unsigned int length) {
    const JOCTET *tiff;
    unsigned long size, ifd;
    unsigned int entries, i;
    int little;
    if (length < 6 || memcmp(data, "Exif\0\0", 6) != 0) return 1; /* another APP1 (XMP): not EXIF */
    tiff = data + 6;
    size = length - 6;
    if (size < 8) return -1;
    if (tiff[0] == 'I' && tiff[1] == 'I') little = 1;
    else if (tiff[0] == 'M' && tiff[1] == 'M') little = 0;
    else return -1;
    if (read16(tiff + 2, little) != 42) return -1;
    ifd = read32(tiff + 4, little);
    if (ifd > size - 2) return -1;
    entries = read16(tiff + ifd, little);
    if (entries > (size - ifd - 2) / 12) return -1;
    for (i = 0; i < entries; i++) {
        const JOCTET *entry = tiff + ifd + 2 + 12 * (unsigned long)i;
        if (read16(entry, little) == 0x0112) {
            /* SHORT, count 1: the value sits in the first two bytes of the value field */
            if (read16(entry + 2, little) != 3 || read32(entry + 4, little) != 1) return -1;
            return read16(entry + 8, little) == 1 ? 1 : 0;
        }
    }
    return 1;
}

static int exif_has_orientation(const JOCTET *data, unsigned int length) {
    /* same walk as exif_upright, only asking whether the tag is there at all (then XMP is not consulted) */
    const JOCTET *tiff;
    unsigned long size, ifd;
    unsigned int entries, i;
    int little;
    if (length < 14 || memcmp(data, "Exif\0\0", 6) != 0) return 0;
    tiff = data + 6;
    size = length - 6;
    little = tiff[0] == 'I';
    ifd = read32(tiff + 4, little);
    if (ifd > size - 2) return 0;
    entries = read16(tiff + ifd, little);
    if (entries > (size - ifd - 2) / 12) return 0;
    for (i = 0; i < entries; i++)
        if (read16(tiff + ifd + 2 + 12 * (unsigned long)i, little) == 0x0112) return 1;
    return 0;
}

/* 1 when XMP says nothing about orientation or says 1; 0 otherwise. Mirrors Pillow's search for
 * tiff:Orientation="N" or <tiff:Orientation>N. */
static int xmp_upright(const JOCTET *data, unsigned int length) {
    static const char NEEDLE[] = "tiff:Orientation";
    const size_t needle = sizeof NEEDLE - 1;
    size_t i;
    if (length < 29 || memcmp(data, "http://ns.adobe.com/xap/1.0/", 29) != 0) return 1;
    for (i = 0; i + needle < length; i++) {
        if (data[i] == 't' && memcmp(data + i, NEEDLE, needle) == 0) {
            size_t at = i + needle;
            if (at < length && data[at] == '>') at += 1;
            else if (at + 1 < length && data[at] == '=' && data[at + 1] == '"') at += 2;
            else continue;
            if (at < length && data[at] >= '0' && data[at] <= '9' && data[at] != '1') return 0;
        }
    }
    return 1;
}

static void check_orientation(j_decompress_ptr src) {
    jpeg_saved_marker_ptr marker;
    int exif_tag = 0;
    for (marker = src->marker_list; marker != NULL; marker = marker->next) {
        if (marker->marker != EXIF_MARKER) continue;
        switch (exif_upright(marker->data, marker->data_length)) {
        case 0: decline((j_common_ptr)src, "EXIF orientation other than 1"); break;
        case -1: decline((j_common_ptr)src, "malformed EXIF block"); break;
        default: break;
        }
        exif_tag |= exif_has_orientation(marker->data, marker->data_length);
    }
    if (exif_tag) return;
    for (marker = src->marker_list; marker != NULL; marker = marker->next)
        if (marker->marker == EXIF_MARKER && !xmp_upright(marker->data, marker->data_length))
            decline((j_common_ptr)src, "XMP orientation other than 1");
}

/* --- eligibility ------------------------------------------------------------------------------------------------ */

static void check_eligible(j_decompress_ptr src, unsigned long long max_pixels) {
    int ci;
    if ((unsigned long long)src->image_width * src->image_height > max_pixels)
        decline((j_common_ptr)src, "over the pixel limit");
    if (src->data_precision != 8) decline((j_common_ptr)src, "not 8 bits per sample");
    if (src->arith_code) decline((j_common_ptr)src, "arithmetic coding");
    if (!((src->jpeg_color_space == JCS_YCbCr && src->num_components == 3) ||
          (src->jpeg_color_space == JCS_GRAYSCALE && src->num_components == 1)))
        decline((j_common_ptr)src, "colour space other than YCbCr or greyscale");
    for (ci = 0; ci < src->num_components; ci++) {
        const jpeg_component_info *comp = &src->comp_info[ci];
        int h = comp->h_samp_factor, v = comp->v_samp_factor;
        /* luma 1 or 2 in each direction, chroma full blocks: 4:4:4, 4:2:2, 4:4:0, 4:2:0 */
        if (ci == 0 ? (h < 1 || h > 2 || v < 1 || v > 2) : (h != 1 || v != 1))
            decline((j_common_ptr)src, "unusual chroma sampling");
        if (comp->quant_tbl_no < 0 || comp->quant_tbl_no >= NUM_QUANT_TBLS ||
            src->quant_tbl_ptrs[comp->quant_tbl_no] == NULL)
            decline((j_common_ptr)src, "component without a quantisation table");
    }
    check_orientation(src);
}

/* --- the target tables ------------------------------------------------------------------------------------------
 * The target entry of each coefficient is the larger of the scaled standard entry and the source's own entry
 * ("never larger than needed"): where the source is already coarser than quality q, a finer step cannot remove
 * anything the source still has, it would only spend bits on the same values. So coarse sources keep their
 * coarse entries and their coefficients unchanged; sources finer than q (the usual case) get exactly the tables
 * Pillow writes at quality q. */

static unsigned int scaled_entry(unsigned int base, int quality) {
    long scale = quality < 50 ? 5000 / quality : 200 - quality * 2; /* jpeg_quality_scaling */
    long value = (base * scale + 50L) / 100L;
    if (value <= 0) value = 1;
    if (value > 255) value = 255; /* force_baseline, as Pillow asks for */
    return (unsigned int)value;
}

static void target_table(const JQUANT_TBL *source, int chroma, int quality, UINT16 out[DCTSIZE2]) {
    const unsigned int *base = chroma ? STD_CHROMINANCE : STD_LUMINANCE;
    int k;
    for (k = 0; k < DCTSIZE2; k++) {
        unsigned int wanted = scaled_entry(base[k], quality);
        unsigned int have = source->quantval[k];
        out[k] = (UINT16)(have > wanted ? have : wanted);
    }
}

/* Per component: its target table, and which output slot holds it (components with equal targets share one). */
static void install_tables(j_decompress_ptr src, j_compress_ptr dst, int quality,
                           UINT16 targets[MAX_COMPONENTS][DCTSIZE2]) {
    int ci, slot, slots = 0;
    UINT16 slot_tables[NUM_QUANT_TBLS][DCTSIZE2];
    for (slot = 0; slot < NUM_QUANT_TBLS; slot++) dst->quant_tbl_ptrs[slot] = NULL; /* drop the copied ones */
    for (ci = 0; ci < src->num_components; ci++) {
        const JQUANT_TBL *source = src->quant_tbl_ptrs[src->comp_info[ci].quant_tbl_no];
        target_table(source, ci > 0, quality, targets[ci]);
        for (slot = 0; slot < slots; slot++)
            if (memcmp(slot_tables[slot], targets[ci], sizeof slot_tables[slot]) == 0) break;
        if (slot == slots) {
            JQUANT_TBL *table = jpeg_alloc_quant_table((j_common_ptr)dst);
            memcpy(slot_tables[slot], targets[ci], sizeof slot_tables[slot]);
            memcpy(table->quantval, targets[ci], sizeof table->quantval);
            table->sent_table = FALSE;
            dst->quant_tbl_ptrs[slot] = table;
            slots++;
        }
        dst->comp_info[ci].quant_tbl_no = slot;
    }
}

/* --- re-quantisation -------------------------------------------------------------------------------------------
 * round(c * q_src / q_dst) with ties towards zero, one block row at a time straight in the coefficient buffers.
 * q_dst >= q_src, so the result never grows in magnitude and cannot overflow a JCOEF.
 *
 * Ties towards zero: a source coefficient that sits exactly midway between two target steps (frequent: the steps
 * are small integers) is as far from both, and the smaller one costs fewer bits. On the benchmark's 240 photos,
 * rounding ties away from zero made outputs 1.6 % larger than the pixel path's (savings 0.2-1.2 points lower per
 * image); towards zero they are 0.2-0.9 points higher, with the same PSNR against the source (docs/jpeg-fast-path.md).
 *
 * Speed: this loop touches every coefficient (5.8 million in a 2400x1600 4:2:0 photo). With a division, or even a
 * multiply-and-shift, per coefficient it cost 11-13 ms of CPU per photo, more than reading the file: scalar code
 * at ~20 instructions a coefficient. So each block is done in a loop the compiler vectorises (SSE2 is enough):
 *
 * 1. |c| * (q_src / q_dst) + (1/2 - 2^-10) in single precision, truncated. This equals the exact result whenever
 *    the quotient is below 2^12 and q_dst <= 255: the exact value is either a tie (k + 1/2) or at least
 *    1/(2 q_dst) >= 2^-9 away from one, float's error there is below 2^-11 + 2^-12 (ratio, product and sum each
 *    rounded once), so adding 1/2 - 2^-10 sends ties down and never pushes anything else across a boundary.
 *    Checked exhaustively against the integer formula for every q_src <= q_dst <= 255 and every |c| up to the bound
 *    and past it (tests/native/requantize_exhaustive.c).
 * 2. The same lanes check |c| <= bound[k] (the quotient is then below 2^12). Every coefficient of a valid 8-bit
 *    JPEG is (|c * q_src| < 2^12); a block with one outside (a corrupt or hostile file), or a table entry above
 *    255, is redone in exact integers: floor((2 |c| q_src + q_dst - 1) / (2 q_dst)). */

#define FLOAT_EXACT_LIMIT 4096U /* 2^12 */

typedef struct {
    float ratio[DCTSIZE2];    /* q_src / q_dst */
    int32_t bound[DCTSIZE2];  /* largest |c| the float path handles exactly for this coefficient; -1: none */
    uint32_t multiplier[DCTSIZE2];
    uint32_t divisor[DCTSIZE2];
} requantizer;

static int prepare(requantizer *r, const JQUANT_TBL *source, const UINT16 target[DCTSIZE2]) {
    int k, changed = 0;
    for (k = 0; k < DCTSIZE2; k++) {
        uint32_t qs = source->quantval[k], qd = target[k];
        r->multiplier[k] = qs;
        r->divisor[k] = qd;
        r->ratio[k] = (float)qs / (float)qd;
        /* quotient |c| * qs / qd < 2^12  <=>  |c| < 2^12 * qd / qs */
        r->bound[k] = (qd <= 255 && qs > 0) ? (int32_t)(((uint64_t)FLOAT_EXACT_LIMIT * qd - 1) / qs) : -1;
        if (r->bound[k] > 32767) r->bound[k] = 32767;
        changed |= qs != qd;
    }
    return changed;
}

static void requantize_block_exact(const requantizer *r, JCOEF *coef) {
    int k;
    for (k = 0; k < DCTSIZE2; k++) {
        int c = coef[k];
        uint32_t a = (uint32_t)(c < 0 ? -c : c);
        uint64_t twice = 2 * (uint64_t)a * r->multiplier[k];
        uint32_t q = (uint32_t)((twice + r->divisor[k] - 1) / (2 * (uint64_t)r->divisor[k]));
        coef[k] = (JCOEF)(c < 0 ? -(int)q : (int)q);
    }
}

static void requantize_block(const requantizer *r, JCOEF *coef) {
    JCOEF result[DCTSIZE2];
    int32_t outside = 0;
    int k;
    for (k = 0; k < DCTSIZE2; k++) {
        int32_t c = coef[k];
        int32_t a = c < 0 ? -c : c;
        int32_t q = (int32_t)((float)a * r->ratio[k] + (0.5f - 1.0f / 1024.0f));
        outside |= r->bound[k] - a; /* negative when a > bound */
        result[k] = (JCOEF)(c < 0 ? -q : q);
    }
    if (outside < 0) requantize_block_exact(r, coef);
    else memcpy(coef, result, sizeof result);
}

/* --- Huffman statistics ----------------------------------------------------------------------------------------
 * Optimised Huffman tables need the symbol counts of the whole image. libjpeg gets them with a second full pass
 * over the coefficients before the real one (optimize_coding), and that pass cost 8 ms of the 11.5 ms it took to
 * write a 2400x1600 photo. We have every block in hand while re-quantising anyway, so we count there, build the
 * tables with libjpeg's own jpeg_gen_optimal_table (exported by every libjpeg 6.2 ABI, though not in jpeglib.h)
 * and write in one pass. The counts follow libjpeg's encode_mcu_gather exactly, so the output is byte for byte
 * what optimize_coding writes (tests/test_jpeg_fast_path.py checks it against requantize(..., libjpeg_huffman=True)):
 * AC symbols per block in zigzag order, independent of block order; DC differences in the scan's block order, with
 * the dummy blocks libjpeg's transcoder adds at the right and bottom edges of an interleaved scan (jctrans.c). */

EXTERN(void) jpeg_gen_optimal_table(j_compress_ptr cinfo, JHUFF_TBL *htbl, long freq[]);

#define MAX_COEF_BITS 10 /* 8-bit samples */

static const unsigned char ZIGZAG[DCTSIZE2] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};

typedef struct {
    long dc[NUM_HUFF_TBLS][257];
    long ac[NUM_HUFF_TBLS][257];
} huffman_counts;

static int bit_length(unsigned int value) { return value == 0 ? 0 : 32 - __builtin_clz(value); }

/* Position in zigzag order of each coefficient in natural order (the inverse of ZIGZAG). */
static const unsigned char ZIGZAG_POSITION[DCTSIZE2] = {
    0,  1,  5,  6,  14, 15, 27, 28, 2,  4,  7,  13, 16, 26, 29, 42, 3,  8,  12, 17, 25, 30,
    41, 43, 9,  11, 18, 24, 31, 40, 44, 53, 10, 19, 23, 32, 39, 45, 52, 54, 20, 22, 33, 38,
    46, 51, 55, 60, 21, 34, 37, 47, 50, 56, 59, 61, 35, 36, 48, 49, 57, 58, 62, 63};

/* Bit i set when coefficient i (natural order) is not zero. After re-quantisation most of a block is zero, so the
 * symbol walk below visits only the non-zero ones; building this mask with SSE2 (8 coefficients a compare) costs a
 * fraction of testing 63 coefficients one by one in zigzag order, which was half of the counting time. */
static uint64_t nonzero_mask(const JCOEF *block) {
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    uint64_t mask = 0;
    int i;
    for (i = 0; i < 4; i++) {
        __m128i low = _mm_cmpeq_epi16(_mm_loadu_si128((const __m128i *)(block + 16 * i)), zero);
        __m128i high = _mm_cmpeq_epi16(_mm_loadu_si128((const __m128i *)(block + 16 * i + 8)), zero);
        uint64_t zeros = (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_packs_epi16(low, high));
        mask |= (~zeros & 0xFFFFu) << (16 * i);
    }
    return mask;
#else
    uint64_t mask = 0;
    int i;
    for (i = 0; i < DCTSIZE2; i++) mask |= (uint64_t)(block[i] != 0) << i;
    return mask;
#endif
}

static void count_ac(j_common_ptr cinfo, const JCOEF *block, long counts[257]) {
    uint64_t natural = nonzero_mask(block) & ~(uint64_t)1, nonzero = 0;
    int last = 0;
    while (natural) { /* the same set, numbered in zigzag order */
        nonzero |= (uint64_t)1 << ZIGZAG_POSITION[__builtin_ctzll(natural)];
        natural &= natural - 1;
    }
    while (nonzero) {
        int at = __builtin_ctzll(nonzero), run = at - last - 1, value = block[ZIGZAG[at]];
        int bits = bit_length((unsigned int)(value < 0 ? -value : value));
        if (bits > MAX_COEF_BITS) decline(cinfo, "coefficient out of range");
        for (; run > 15; run -= 16) counts[0xF0]++;
        counts[(run << 4) + bits]++;
        last = at;
        nonzero &= nonzero - 1;
    }
    if (last < DCTSIZE2 - 1) counts[0]++; /* end of block */
}

static void count_dc(j_common_ptr cinfo, int value, int *last, long counts[257]) {
    int difference = value - *last;
    int bits = bit_length((unsigned int)(difference < 0 ? -difference : difference));
    if (bits > MAX_COEF_BITS + 1) decline(cinfo, "coefficient out of range");
    counts[bits]++;
    *last = value;
}

/* DC differences in the order the (single, baseline) output scan codes the blocks. The DC values were copied into
 * one small array per component while re-quantising: reading them from the blocks themselves (one cache line a
 * block, 11 MB of them) was a fifth of the counting time. */
static void count_dc_in_scan_order(j_decompress_ptr src, j_compress_ptr dst, JCOEF *const *dc_values,
                                   huffman_counts *counts) {
    int last[MAX_COMPONENTS] = {0};
    int ci;
    if (src->num_components == 1) { /* non-interleaved: one block per MCU, raster order, no dummy blocks */
        const jpeg_component_info *comp = &src->comp_info[0];
        long *dc = counts->dc[dst->comp_info[0].dc_tbl_no];
        size_t i, n = (size_t)comp->height_in_blocks * comp->width_in_blocks;
        for (i = 0; i < n; i++) count_dc((j_common_ptr)src, dc_values[0][i], &last[0], dc);
        return;
    }
    {
        int max_h = 1, max_v = 1;
        JDIMENSION mcu_cols, mcu_rows, my, mx;
        for (ci = 0; ci < src->num_components; ci++) {
            if (src->comp_info[ci].h_samp_factor > max_h) max_h = src->comp_info[ci].h_samp_factor;
            if (src->comp_info[ci].v_samp_factor > max_v) max_v = src->comp_info[ci].v_samp_factor;
        }
        mcu_cols = (src->image_width + 8 * max_h - 1) / (8 * max_h);
        mcu_rows = (src->image_height + 8 * max_v - 1) / (8 * max_v);
        for (my = 0; my < mcu_rows; my++) {
            for (mx = 0; mx < mcu_cols; mx++) {
                int previous = 0; /* the DC of the MCU's previous block: what a dummy block copies */
                for (ci = 0; ci < src->num_components; ci++) {
                    const jpeg_component_info *comp = &src->comp_info[ci];
                    long *dc = counts->dc[dst->comp_info[ci].dc_tbl_no];
                    long *ac = counts->ac[dst->comp_info[ci].ac_tbl_no];
                    int y, x;
                    for (y = 0; y < comp->v_samp_factor; y++) {
                        JDIMENSION row = my * comp->v_samp_factor + y;
                        for (x = 0; x < comp->h_samp_factor; x++) {
                            JDIMENSION col = mx * comp->h_samp_factor + x;
                            if (row < comp->height_in_blocks && col < comp->width_in_blocks)
                                previous = dc_values[ci][(size_t)row * comp->width_in_blocks + col];
                            else
                                ac[0]++; /* a dummy block: DC of the previous block, no AC (end of block) */
                            count_dc((j_common_ptr)src, previous, &last[ci], dc);
                        }
                    }
                }
            }
        }
    }
}

static void install_huffman_tables(j_compress_ptr dst, huffman_counts *counts) {
    int ci;
    for (ci = 0; ci < dst->num_components; ci++) {
        int dc = dst->comp_info[ci].dc_tbl_no, ac = dst->comp_info[ci].ac_tbl_no;
        if (dst->dc_huff_tbl_ptrs[dc] == NULL) dst->dc_huff_tbl_ptrs[dc] = jpeg_alloc_huff_table((j_common_ptr)dst);
        if (dst->ac_huff_tbl_ptrs[ac] == NULL) dst->ac_huff_tbl_ptrs[ac] = jpeg_alloc_huff_table((j_common_ptr)dst);
    }
    /* each table once, even when components share it (jpeg_gen_optimal_table consumes its counts) */
    for (ci = 0; ci < NUM_HUFF_TBLS; ci++) {
        int used_dc = 0, used_ac = 0, cj;
        for (cj = 0; cj < dst->num_components; cj++) {
            used_dc |= dst->comp_info[cj].dc_tbl_no == ci;
            used_ac |= dst->comp_info[cj].ac_tbl_no == ci;
        }
        if (used_dc) jpeg_gen_optimal_table(dst, dst->dc_huff_tbl_ptrs[ci], counts->dc[ci]);
        if (used_ac) jpeg_gen_optimal_table(dst, dst->ac_huff_tbl_ptrs[ci], counts->ac[ci]);
    }
}

static void requantize_component(j_decompress_ptr src, jvirt_barray_ptr array, const jpeg_component_info *comp,
                                 const UINT16 target[DCTSIZE2], long *ac_counts, JCOEF *dc_values) {
    const JQUANT_TBL *source = comp->quant_table; /* the table the scans were coded with */
    requantizer r;
    int changed;
    JDIMENSION row, rows = comp->height_in_blocks, blocks = comp->width_in_blocks, b;
    if (source == NULL) decline((j_common_ptr)src, "a component has no scan");
    changed = prepare(&r, source, target);
    if (!changed && ac_counts == NULL && dc_values == NULL) return;
    for (row = 0; row < rows; row++) {
        JBLOCKROW blockrow = (*src->mem->access_virt_barray)((j_common_ptr)src, array, row, 1, TRUE)[0];
        for (b = 0; b < blocks; b++) {
            if (changed) requantize_block(&r, blockrow[b]);
            if (ac_counts != NULL) count_ac((j_common_ptr)src, blockrow[b], ac_counts);
            if (dc_values != NULL) dc_values[(size_t)row * blocks + b] = blockrow[b][0];
        }
    }
}

/* --- output buffer --------------------------------------------------------------------------------------------
 * Our own destination manager rather than jpeg_mem_dest: that one reallocates without telling the caller, so after
 * an error longjmp the caller cannot know which buffer to free. Here the buffer always lives in `growing`. */

typedef struct {
    struct jpeg_destination_mgr pub;
    unsigned char *data;
    size_t capacity;
} growing;

static void growing_init(j_compress_ptr cinfo) {
    growing *dest = (growing *)cinfo->dest;
    dest->pub.next_output_byte = dest->data;
    dest->pub.free_in_buffer = dest->capacity;
}

static boolean growing_empty(j_compress_ptr cinfo) {
    growing *dest = (growing *)cinfo->dest;
    size_t used = dest->capacity; /* libjpeg asks only when the buffer is full */
    unsigned char *bigger;
    if (dest->capacity > ((size_t)-1) / 2) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 0);
    bigger = (unsigned char *)realloc(dest->data, dest->capacity * 2);
    if (bigger == NULL) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 0);
    dest->data = bigger;
    dest->capacity *= 2;
    dest->pub.next_output_byte = bigger + used;
    dest->pub.free_in_buffer = dest->capacity - used;
    return TRUE;
}

static void growing_term(j_compress_ptr cinfo) { (void)cinfo; }

/* --- the transcoder --------------------------------------------------------------------------------------------- */

typedef struct {
    outcome result;
    char message[JMSG_LENGTH_MAX + 64];
    unsigned char *output;
    size_t output_size;
} transcode_result;

static void transcode(const unsigned char *data, size_t size, int quality, unsigned long long max_pixels,
                      int libjpeg_huffman, transcode_result *out) {
    struct jpeg_decompress_struct src;
    struct jpeg_compress_struct dst;
    error_manager errors;
    scan_limiter limiter;
    /* touched after setjmp, read after the longjmp: volatile */
    volatile int have_dst = 0;
    growing output;
    jvirt_barray_ptr *coefficients;
    UINT16 targets[MAX_COMPONENTS][DCTSIZE2];
    huffman_counts *counts = NULL;
    JCOEF *dc_values[MAX_COMPONENTS];
    jpeg_saved_marker_ptr marker;
    int ci;

    memset(out, 0, sizeof *out);
    memset(&src, 0, sizeof src);
    memset(&dst, 0, sizeof dst);
    memset(&output, 0, sizeof output);
    src.err = jpeg_std_error(&errors.pub);
    errors.pub.error_exit = on_error;
    errors.pub.emit_message = on_message;
    errors.pub.output_message = on_output_message;
    errors.failure = OK;
    errors.message[0] = '\0';
    limiter.pub.progress_monitor = on_progress;
    limiter.errors = &errors;

    if (setjmp(errors.jump)) {
        out->result = errors.failure == OK ? JPEG_ERROR : errors.failure;
        memcpy(out->message, errors.message, sizeof out->message);
        if (have_dst) jpeg_destroy_compress(&dst);
        jpeg_destroy_decompress(&src);
        free(output.data);
        return;
    }
    jpeg_create_decompress(&src);
    src.progress = &limiter.pub;
    if (size > (size_t)~0UL) decline((j_common_ptr)&src, "input too large");
    jpeg_mem_src(&src, data, (unsigned long)size);
    jpeg_save_markers(&src, ICC_MARKER, 0xFFFF);
    jpeg_save_markers(&src, EXIF_MARKER, 0xFFFF);
    jpeg_read_header(&src, TRUE);
    check_eligible(&src, max_pixels);
    coefficients = jpeg_read_coefficients(&src);

    dst.err = &errors.pub;
    jpeg_create_compress(&dst);
    have_dst = 1;
    jpeg_copy_critical_parameters(&src, &dst); /* size, components, sampling; baseline sequential, JFIF header */
    install_tables(&src, &dst, quality, targets);
    if (libjpeg_huffman) { /* libjpeg's two-pass optimisation: the reference our counts are tested against */
        dst.optimize_coding = TRUE;
        for (ci = 0; ci < src.num_components; ci++)
            requantize_component(&src, coefficients[ci], &src.comp_info[ci], targets[ci], NULL, NULL);
    } else {
        counts = (huffman_counts *)(*dst.mem->alloc_small)((j_common_ptr)&dst, JPOOL_IMAGE, sizeof *counts);
        memset(counts, 0, sizeof *counts);
        for (ci = 0; ci < src.num_components; ci++) {
            const jpeg_component_info *comp = &src.comp_info[ci];
            size_t blocks = (size_t)comp->width_in_blocks * comp->height_in_blocks;
            dc_values[ci] = (JCOEF *)(*dst.mem->alloc_large)((j_common_ptr)&dst, JPOOL_IMAGE, blocks * sizeof(JCOEF));
            requantize_component(&src, coefficients[ci], comp, targets[ci], counts->ac[dst.comp_info[ci].ac_tbl_no],
                                 dc_values[ci]);
        }
        count_dc_in_scan_order(&src, &dst, dc_values, counts);
        install_huffman_tables(&dst, counts);
        dst.optimize_coding = FALSE;
    }
    /* a q50 re-encode of a photo is about a quarter of a q90 source: start there and double when needed */
    output.capacity = size / 4 + 4096;
    output.data = (unsigned char *)malloc(output.capacity);
    if (output.data == NULL) ERREXIT1(&dst, JERR_OUT_OF_MEMORY, 0);
    output.pub.init_destination = growing_init;
    output.pub.empty_output_buffer = growing_empty;
    output.pub.term_destination = growing_term;
    dst.dest = &output.pub;
    jpeg_write_coefficients(&dst, coefficients);
    /* the ICC profile survives (its APP2 chunks as they were); every other marker is dropped */
    for (marker = src.marker_list; marker != NULL; marker = marker->next)
        if (marker->marker == ICC_MARKER && marker->data_length >= 14 &&
            memcmp(marker->data, "ICC_PROFILE\0", 12) == 0)
            jpeg_write_marker(&dst, ICC_MARKER, marker->data, marker->data_length);
    jpeg_finish_compress(&dst);
    jpeg_destroy_compress(&dst);
    have_dst = 0;
    jpeg_finish_decompress(&src);
    jpeg_destroy_decompress(&src);
    out->result = OK;
    out->output = output.data;
    out->output_size = output.capacity - output.pub.free_in_buffer;
}

/* --- Python ----------------------------------------------------------------------------------------------------- */

static PyObject *requantize(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"data", "quality", "max_pixels", "libjpeg_huffman", NULL};
    Py_buffer input;
    int quality, libjpeg_huffman = 0;
    unsigned long long max_pixels;
    transcode_result result;
    PyObject *answer = NULL;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*iK|p", keywords, &input, &quality, &max_pixels,
                                     &libjpeg_huffman)) return NULL;
    if (quality < 1 || quality > 100) {
        PyBuffer_Release(&input);
        PyErr_SetString(PyExc_ValueError, "quality must be 1..100");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    transcode((const unsigned char *)input.buf, (size_t)input.len, quality, max_pixels, libjpeg_huffman, &result);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&input);
    switch (result.result) {
    case OK:
        answer = PyBytes_FromStringAndSize((const char *)result.output, (Py_ssize_t)result.output_size);
        free(result.output);
        return answer;
    case NOT_ELIGIBLE: PyErr_SetString(NotEligibleError, result.message); return NULL;
    case OUT_OF_MEMORY: return PyErr_NoMemory();
    default: PyErr_SetString(JpegDataError, result.message); return NULL;
    }
}

static PyMethodDef methods[] = {
    {"requantize", (PyCFunction)(void (*)(void))requantize, METH_VARARGS | METH_KEYWORDS,
     "requantize(data, quality, max_pixels, libjpeg_huffman=False) -> bytes: the JPEG re-quantised to the\n"
     "standard tables at quality, in the DCT domain, with optimised Huffman tables (counted here, or by libjpeg's\n"
     "own second pass with libjpeg_huffman=True: same bytes, slower). Raises NotEligible or JpegError."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_jpegdct",
                                        "JPEG re-quantisation in the DCT domain (libjpeg-turbo).", -1, methods};

PyMODINIT_FUNC PyInit__jpegdct(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    NotEligibleError = PyErr_NewExceptionWithDoc("_jpegdct.NotEligible",
                                                 "The input is a JPEG this path does not handle.", NULL, NULL);
    JpegDataError = PyErr_NewExceptionWithDoc("_jpegdct.JpegError", "libjpeg found the data corrupt.", NULL, NULL);
    if (NotEligibleError == NULL || JpegDataError == NULL || PyModule_AddObjectRef(module, "NotEligible",
                                                                                   NotEligibleError) < 0 ||
        PyModule_AddObjectRef(module, "JpegError", JpegDataError) < 0 ||
        PyModule_AddIntConstant(module, "MAX_SCANS", MAX_SCANS) < 0 ||
        /* the libjpeg-turbo this was built against writes the bytes: part of the output cache's key */
        PyModule_AddIntConstant(module, "LIBJPEG_TURBO_VERSION_NUMBER",
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
                                LIBJPEG_TURBO_VERSION_NUMBER
#else
                                0
#endif
                                ) < 0) {
        Py_XDECREF(NotEligibleError);
        Py_XDECREF(JpegDataError);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
