/* A forward pass of a Llama-family model (Llama, Mistral, Qwen2) for a few tokens (a decode
 * step, a verify pass, a short edit) on CPU, over a K/V slab: built and loaded by
 * kernels/llama_decode_cpu.py, which holds the why. Weights are float32, bfloat16 or int8 with a
 * scale per row, the slab float32 or bfloat16; the arithmetic is float32 throughout, except for
 * int8 weights whose activations are quantized too (WEIGHTS_INT8_Q8): their products are sums of
 * int8 products, in integers, over blocks of ACTIVATION_BLOCK activations that share a scale.
 *
 * Portable C: the inner loops are `omp simd` reductions (compiled with -fopenmp-simd, which
 * vectorizes them without -ffast-math and without an OpenMP runtime), so the same file builds
 * for AVX2, AVX-512 or NEON under -march=native. The bfloat16 and int8 weight rows, whose
 * widening GCC vectorizes poorly, have AVX-512 and AVX2 intrinsics, int8-by-int8 products
 * AVX-512 VNNI and AVX2 ones, and attention's short dots AVX2 ones, each used where the target
 * has them. Threads are this file's own pool: the calling thread plus
 * helpers that spin between the parallel parts of a step and sleep when idle.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 64
/* A helper spins this long after its last task before sleeping: longer than the Python between
 * two decode steps, far shorter than an editor's pause between requests. */
#define SPIN_NANOSECONDS 3000000L
/* Output columns a thread accumulates at once in a transposed ([in, out]) product, for how many
 * input rows at once. */
#define COLUMN_BLOCK 64
#define COLUMN_ROWS 4
/* The most tokens one call takes: a verify pass, an edit's few new tokens, a short refresh. */
#define MAX_ROWS 64
/* Slots of one K/V head whose keys, then values, are taken together (a bfloat16 block is widened
 * once for all queries); values are summed by sub-blocks of VALUE_BYTES within it. */
#define SLOT_BLOCK 256
/* Bytes of values every query of a pass sums over before the next ones: half of a 32 KB L1. */
#define VALUE_BYTES 16384

/* How a projection's weights are stored. */
enum { WEIGHTS_FLOAT32 = 0, WEIGHTS_BFLOAT16 = 1, WEIGHTS_INT8 = 2, WEIGHTS_INT8_Q8 = 3 };

/* WEIGHTS_INT8_Q8: each input row is quantized to int8 by blocks of this many values, one float
 * scale each (llama.cpp's Q8_0 blocks), as the product starts. The row's length is a multiple. */
#define ACTIVATION_BLOCK 32
/* Quantized activations are read 64 at a time, two blocks (one AVX-512 register). */
#define Q8_CHUNK 64

typedef struct {
    const void *weight;  /* [out, in] row-major, or [in, out] row-major when transposed */
    const float *bias;   /* [out] or NULL */
    const float *scales; /* int8: [out], weight row o stands for weight[o]·scales[o]; else NULL */
    int64_t transposed;  /* float32 weights only */
    int64_t format;      /* WEIGHTS_*; bfloat16 and int8 weights are row-major */
} projection_t;

typedef struct {
    const float *input_norm, *post_attention_norm;
    projection_t q, k, v, o, gate, up, down;
    void *keys, *values; /* this layer's [kv_heads, capacity, head_dim], float32 or bfloat16 */
} layer_t;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, capacity;
    double eps;
    const void *embed; /* [vocab, hidden], element (t, i) at t*embed_row + i*embed_col */
    int64_t embed_row, embed_col;
    const float *final_norm;
    projection_t lm_head;
    const layer_t *layer;
    int64_t embed_bf16; /* the embedding is bfloat16 */
    int64_t slab_bf16;  /* the keys and values are stored as bfloat16 */
} model_t;

/* bfloat16 is the top half of a float32: widening is a shift. Narrowing rounds to nearest, ties
 * to even, as torch's .to(torch.bfloat16) does, so the slab holds what torch would write. */
static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint16_t float_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if (value != value) return 0x7FC0;
    return (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

static void widen(const uint16_t *restrict from, float *restrict to, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) to[i] = bf16_to_float(from[i]);
}

/* ---- the pool ------------------------------------------------------------------------------ */

typedef void (*task_fn)(void *context, int part, int parts);

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_int generation; /* bumped once per parallel part */
    atomic_int remaining;  /* helpers still working on it */
    atomic_int sleeping;
    int helpers;
    int parts;
    task_fn task;
    void *context;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static pthread_t helper_threads[MAX_THREADS];
/* The generation a helper was started at: a task posted before it first looks is still run. */
static int start_generation[MAX_THREADS];

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *helper_main(void *arg) {
    int index = (int)(intptr_t)arg;
    int seen = start_generation[index];
    for (;;) {
        int64_t idle_since = now_ns();
        int generation;
        int spins = 0;
        while ((generation = atomic_load_explicit(&pool.generation, memory_order_acquire)) ==
               seen) {
            cpu_relax();
            if (++spins == 1024) {
                spins = 0;
                if (now_ns() - idle_since > SPIN_NANOSECONDS) {
                    pthread_mutex_lock(&pool.lock);
                    atomic_fetch_add(&pool.sleeping, 1);
                    while (atomic_load(&pool.generation) == seen)
                        pthread_cond_wait(&pool.wake, &pool.lock);
                    atomic_fetch_sub(&pool.sleeping, 1);
                    pthread_mutex_unlock(&pool.lock);
                    idle_since = now_ns();
                }
            }
        }
        seen = generation;
        if (index < pool.parts - 1) pool.task(pool.context, index + 1, pool.parts);
        atomic_fetch_sub_explicit(&pool.remaining, 1, memory_order_acq_rel);
    }
    return NULL;
}

/* Runs task(context, part, parts) for part 0..parts-1, part 0 on the calling thread. */
static void run_parallel(task_fn task, void *context, int parts) {
    if (parts <= 1 || pool.helpers == 0) {
        for (int part = 0; part < parts; part++) task(context, part, parts);
        return;
    }
    if (parts > pool.helpers + 1) parts = pool.helpers + 1;
    pool.task = task;
    pool.context = context;
    pool.parts = parts;
    atomic_store_explicit(&pool.remaining, pool.helpers, memory_order_relaxed);
    /* Sequentially consistent, so that a helper going to sleep either sees it or is seen. */
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    task(context, 0, parts);
    while (atomic_load_explicit(&pool.remaining, memory_order_acquire) > 0) cpu_relax();
}

/* A forked child has none of the parent's helpers. */
static void forget_helpers(void) {
    pool.helpers = 0;
    atomic_store(&pool.sleeping, 0);
}

/* Starts helpers until there are threads-1 of them; returns how many threads a step may use:
 * `threads`, or fewer where helpers could not be started. */
static int pool_threads(int threads) {
    static int fork_handler;
    if (!fork_handler) fork_handler = pthread_atfork(NULL, NULL, forget_helpers) == 0;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    while (pool.helpers < threads - 1) {
        start_generation[pool.helpers] = atomic_load(&pool.generation);
        if (pthread_create(&helper_threads[pool.helpers], NULL, helper_main,
                           (void *)(intptr_t)pool.helpers) != 0)
            break;
        pool.helpers++;
    }
    return threads < pool.helpers + 1 ? threads : pool.helpers + 1;
}

/* ---- arithmetic ---------------------------------------------------------------------------- */

static void rms_norm(const float *x, const float *weight, float *out, int64_t n, double eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) sum += x[i] * x[i];
    float scale = (float)(1.0 / sqrt((double)sum / (double)n + eps));
#pragma omp simd
    for (int64_t i = 0; i < n; i++) out[i] = weight[i] * (x[i] * scale);
}

/* Partial sums are kept in LANES lanes and added pairwise at the end: an `omp simd reduction`
 * without -ffast-math ends in a lane-by-lane sum, which costs more than the products for short
 * rows such as a 64-dim key. 16 lanes is one AVX-512 register, two AVX2 ones, four NEON ones. */
#define LANES 16

static inline float lanes_sum(float a[LANES]) {
    for (int width = LANES / 2; width > 0; width /= 2)
#pragma omp simd
        for (int l = 0; l < width; l++) a[l] += a[l + width];
    return a[0];
}

static inline float dot(const float *a, const float *b, int64_t n) {
    float sum[LANES] = {0};
    int64_t whole = n - n % LANES;
    for (int64_t i = 0; i < whole; i += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) sum[l] += a[i + l] * b[i + l];
    float tail = 0.0f;
    for (int64_t i = whole; i < n; i++) tail += a[i] * b[i];
    return lanes_sum(sum) + tail;
}

/* out[j] = rows[j]·x for the four consecutive rows of n values at `rows`: four independent
 * sums, so that one pass over x feeds four FMA chains. */
static inline void dot_four_rows(const float *rows, const float *x, int64_t n, float out[4]) {
    const float *r0 = rows, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
    float s0[LANES] = {0}, s1[LANES] = {0}, s2[LANES] = {0}, s3[LANES] = {0};
    int64_t whole = n - n % LANES;
    for (int64_t i = 0; i < whole; i += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            float xi = x[i + l];
            s0[l] += r0[i + l] * xi;
            s1[l] += r1[i + l] * xi;
            s2[l] += r2[i + l] * xi;
            s3[l] += r3[i + l] * xi;
        }
    float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;
    for (int64_t i = whole; i < n; i++) {
        t0 += r0[i] * x[i];
        t1 += r1[i] * x[i];
        t2 += r2[i] * x[i];
        t3 += r3[i] * x[i];
    }
    out[0] = lanes_sum(s0) + t0;
    out[1] = lanes_sum(s1) + t1;
    out[2] = lanes_sum(s2) + t2;
    out[3] = lanes_sum(s3) + t3;
}

static inline void store(float *y, int64_t o, float value, const float *bias, int accumulate) {
    value += bias ? bias[o] : 0.0f;
    y[o] = accumulate ? y[o] + value : value;
}

/* Row o's sum of products, scaled where its weights are int8. */
static inline float scaled(const projection_t *p, int64_t o, float sum) {
    return p->scales ? sum * p->scales[o] : sum;
}

static inline float float_value(float v) { return v; }
static inline float int8_value(int8_t v) { return (float)v; }

/* row_partial_NAME(w, x, n, partial): one weight row's 16-lane partial sums of w·x (lanes not
 * yet added), read front to back, values widened to float32 by WIDEN as they are read. Lane l
 * sums elements l, l + 32, ... and, apart, l + 16, l + 48, ..., and the two are added at the end:
 * two chains of adds, so the wait for one add does not hold up the next. The tail past the last
 * whole LANES goes into lane 0. Rows are read one after another, not four side by side as
 * before: four rows of 896 int8 values read side by side kept one core at 11 GB/s, the same
 * bytes read in order at 29 (a /tmp microbenchmark over the 0.5B shape's lm_head, AMD EPYC),
 * whatever the arithmetic; float32 rows of 896 went from 16 to 25 GB/s on one core. */
#define ROW_PARTIAL_PORTABLE(NAME, type, WIDEN)                                                 \
    static inline void row_partial_##NAME(const type *w, const float *x, int64_t n,            \
                                          float *restrict partial) {                           \
        float even[LANES] = {0}, odd[LANES] = {0};                                             \
        int64_t whole = n - n % LANES, i = 0;                                                  \
        for (; i + 2 * LANES <= whole; i += 2 * LANES)                                         \
            _Pragma("omp simd") for (int l = 0; l < LANES; l++) {                              \
                even[l] += WIDEN(w[i + l]) * x[i + l];                                         \
                odd[l] += WIDEN(w[i + LANES + l]) * x[i + LANES + l];                          \
            }                                                                                  \
        if (i < whole)                                                                         \
            _Pragma("omp simd") for (int l = 0; l < LANES; l++) even[l] +=                     \
                WIDEN(w[i + l]) * x[i + l];                                                    \
        _Pragma("omp simd") for (int l = 0; l < LANES; l++) partial[l] = even[l] + odd[l];     \
        for (int64_t t = whole; t < n; t++) partial[0] += WIDEN(w[t]) * x[t];                  \
    }

#if defined(__AVX2__) && defined(__FMA__)
/* The same sums in intrinsics: GCC 12 vectorized the loops above for bfloat16 and int8 with the
 * widening split over 128-bit halves (int8 converted four lanes at a time). Sixteen lanes are
 * one AVX-512 register or two AVX2 ones; lane l sums the same elements in the same order either
 * way, so the sums are the portable loop's. */
#include <immintrin.h>

/* Each weight row's read asks for the line this far ahead (measured when four rows were read
 * side by side: one core, 17M weights from memory, bfloat16 5.8-6.6 -> 4.3-4.7 ms, int8
 * 3.9-4.4 -> 1.6-2.6 ms; float32's loop gained nothing). */
#define PREFETCH_BYTES 4096

#if defined(__AVX512F__)
static inline __m512 load16_bfloat16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static inline __m512 load16_int8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

#define ROW_PARTIAL_VECTOR(NAME, type, WIDEN)                                                   \
    static inline void row_partial_##NAME(const type *w, const float *x, int64_t n,            \
                                          float *restrict partial) {                           \
        __m512 even = _mm512_setzero_ps(), odd = even;                                         \
        int64_t whole = n - n % LANES, i = 0;                                                  \
        for (; i + 2 * LANES <= whole; i += 2 * LANES) {                                       \
            _mm_prefetch((const char *)(w + i) + PREFETCH_BYTES, _MM_HINT_T0);                 \
            even = _mm512_fmadd_ps(load16_##NAME(w + i), _mm512_loadu_ps(x + i), even);        \
            odd = _mm512_fmadd_ps(load16_##NAME(w + i + LANES), _mm512_loadu_ps(x + i + LANES), \
                                  odd);                                                        \
        }                                                                                      \
        if (i < whole)                                                                         \
            even = _mm512_fmadd_ps(load16_##NAME(w + i), _mm512_loadu_ps(x + i), even);       \
        _mm512_storeu_ps(partial, _mm512_add_ps(even, odd));                                   \
        for (int64_t t = whole; t < n; t++) partial[0] += WIDEN(w[t]) * x[t];                  \
    }
#else
static inline __m256 load8_bfloat16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline __m256 load8_int8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Lanes 0-7 in lo, 8-15 in hi, for the even and the odd groups of sixteen. */
#define ROW_PARTIAL_VECTOR(NAME, type, WIDEN)                                                   \
    static inline void row_partial_##NAME(const type *w, const float *x, int64_t n,            \
                                          float *restrict partial) {                           \
        __m256 lo = _mm256_setzero_ps(), hi = lo, odd_lo = lo, odd_hi = lo;                    \
        int64_t whole = n - n % LANES, i = 0;                                                  \
        for (; i + 2 * LANES <= whole; i += 2 * LANES) {                                       \
            _mm_prefetch((const char *)(w + i) + PREFETCH_BYTES, _MM_HINT_T0);                 \
            lo = _mm256_fmadd_ps(load8_##NAME(w + i), _mm256_loadu_ps(x + i), lo);             \
            hi = _mm256_fmadd_ps(load8_##NAME(w + i + 8), _mm256_loadu_ps(x + i + 8), hi);     \
            odd_lo = _mm256_fmadd_ps(load8_##NAME(w + i + 16), _mm256_loadu_ps(x + i + 16),    \
                                     odd_lo);                                                  \
            odd_hi = _mm256_fmadd_ps(load8_##NAME(w + i + 24), _mm256_loadu_ps(x + i + 24),    \
                                     odd_hi);                                                  \
        }                                                                                      \
        if (i < whole) {                                                                       \
            lo = _mm256_fmadd_ps(load8_##NAME(w + i), _mm256_loadu_ps(x + i), lo);             \
            hi = _mm256_fmadd_ps(load8_##NAME(w + i + 8), _mm256_loadu_ps(x + i + 8), hi);     \
        }                                                                                      \
        _mm256_storeu_ps(partial, _mm256_add_ps(lo, odd_lo));                                  \
        _mm256_storeu_ps(partial + 8, _mm256_add_ps(hi, odd_hi));                              \
        for (int64_t t = whole; t < n; t++) partial[0] += WIDEN(w[t]) * x[t];                  \
    }
#endif

_Static_assert(LANES == 16, "the vector row products hold 16 lanes");
ROW_PARTIAL_VECTOR(bfloat16, uint16_t, bf16_to_float)
ROW_PARTIAL_VECTOR(int8, int8_t, int8_value)
#else
ROW_PARTIAL_PORTABLE(bfloat16, uint16_t, bf16_to_float)
ROW_PARTIAL_PORTABLE(int8, int8_t, int8_value)
#endif
ROW_PARTIAL_PORTABLE(float32, float, float_value)

/* ---- int8 weights by int8 activations (WEIGHTS_INT8_Q8) ------------------------------------ */

/* Input rows quantized for WEIGHTS_INT8_Q8 products: row r's value i is q·scale of its block,
 * q = round(x / scale) in -127..127 and scale = max|x| / 127 over the block. Laid out for the
 * chunk loops: magnitudes |q| (the unsigned side of a u8·s8 product), q itself, a bit per value
 * that is negative, and per chunk of Q8_CHUNK values sixteen float lanes, lanes 0-7 holding the
 * scale of its first block and 8-15 of its second (0 past the end of the row). */
typedef struct {
    uint8_t *magnitude; /* [rows, chunks * Q8_CHUNK], zero past the row */
    int8_t *value;      /* the same, signed */
    uint64_t *negative; /* [rows, chunks] */
    float *lane_scale;  /* [rows, chunks, 16] */
    int64_t chunks;
} q8_rows_t;

static inline int64_t q8_chunks(int64_t in) { return (in + Q8_CHUNK - 1) / Q8_CHUNK; }

/* Bytes of scratch q8_rows for `rows` rows of at most `in` values take, 64-byte aligned parts. */
static int64_t q8_scratch_bytes(int64_t rows, int64_t in) {
    int64_t chunks = q8_chunks(in);
    return rows * chunks * (2 * Q8_CHUNK + 8 + 16 * 4) + 4 * 64;
}

static q8_rows_t q8_rows_at(void *scratch, int64_t rows, int64_t in) {
    int64_t chunks = q8_chunks(in);
    uintptr_t at = ((uintptr_t)scratch + 63) & ~(uintptr_t)63;
    q8_rows_t q;
    q.chunks = chunks;
    q.magnitude = (uint8_t *)at;
    at += (uintptr_t)(rows * chunks * Q8_CHUNK + 63) & ~(uintptr_t)63;
    q.value = (int8_t *)at;
    at += (uintptr_t)(rows * chunks * Q8_CHUNK + 63) & ~(uintptr_t)63;
    q.negative = (uint64_t *)at;
    at += (uintptr_t)(rows * chunks * 8 + 63) & ~(uintptr_t)63;
    q.lane_scale = (float *)at;
    return q;
}

/* Quantizes x [rows, in] (in a multiple of ACTIVATION_BLOCK) into q, storage laid out by
 * q8_rows_at for at least `in` values a row. The scale, its inverse and
 * the rounding (to nearest, ties to even) are cache_engine/model/quantization.py's
 * quantize_activation_blocks, operation for operation, so both give the same q. */
static void quantize_rows(const float *x, int64_t rows, int64_t in, q8_rows_t *q) {
    /* The storage was laid out for the widest input; these rows hold `in` values each. */
    q->chunks = q8_chunks(in);
    int64_t padded = q->chunks * Q8_CHUNK;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * in;
        uint8_t *magnitude = q->magnitude + r * padded;
        int8_t *value = q->value + r * padded;
        float *lane_scale = q->lane_scale + r * q->chunks * 16;
        memset(magnitude + in, 0, (size_t)(padded - in));
        memset(value + in, 0, (size_t)(padded - in));
        for (int64_t b0 = 0; b0 < padded; b0 += ACTIVATION_BLOCK) {
            float scale = 0.0f;
            if (b0 < in) {
                float largest = 0.0f;
#pragma omp simd reduction(max : largest)
                for (int64_t i = b0; i < b0 + ACTIVATION_BLOCK; i++) {
                    float a = fabsf(xr[i]);
                    largest = a > largest ? a : largest;
                }
                scale = largest / 127.0f;
                float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
                for (int64_t i = b0; i < b0 + ACTIVATION_BLOCK; i++) {
                    float rounded = nearbyintf(xr[i] * inverse);
                    rounded = rounded > 127.0f ? 127.0f : rounded < -127.0f ? -127.0f : rounded;
                    int v = (int)rounded;
                    value[i] = (int8_t)v;
                    magnitude[i] = (uint8_t)(v < 0 ? -v : v);
                }
            }
            float *lanes = lane_scale + (b0 / Q8_CHUNK) * 16 + (b0 % Q8_CHUNK ? 8 : 0);
            for (int l = 0; l < 8; l++) lanes[l] = scale;
        }
        for (int64_t c = 0; c < q->chunks; c++) {
            uint64_t bits = 0;
            for (int i = 0; i < Q8_CHUNK; i++)
                bits |= (uint64_t)(value[c * Q8_CHUNK + i] < 0) << i;
            q->negative[r * q->chunks + c] = bits;
        }
    }
}

/* The sums of products of one int8 weight row, n values (a multiple of ACTIVATION_BLOCK), with
 * `count` (1 to 4) quantized input rows r0..: sixteen float lanes for the even chunks and sixteen
 * for the odd ones per input row (two chains of adds, not one), lane j of chunk c adding
 * lane_scale[c][j] · Σ_{t<4} q[64c + 4j + t]·w[64c + 4j + t], the inner sum in integers, exact;
 * then the even and odd lanes are added pairwise. The inner sums are what AVX-512 VNNI's vpdpbusd
 * and AVX2's maddubs-then-madd give per 32-bit lane, so every path adds the same numbers in the
 * same order. The weight row is read once, front to back, for all the input rows, as
 * row_partial_NAME reads its rows. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define Q8_PATH "avx512vnni"

static inline __attribute__((always_inline)) __m512i q8_weights(const int8_t *w, int64_t c,
                                                                int64_t n) {
    const int8_t *at = w + c * Q8_CHUNK;
    if ((c + 1) * Q8_CHUNK <= n) return _mm512_loadu_si512((const void *)at);
    /* Half a chunk at the row's end: the rest of the register stays zero, so reads never pass
     * the row (the last row of a matrix ends its buffer). */
    return _mm512_maskz_loadu_epi8(0xFFFFFFFFull, at);
}

/* Chunk c of input row r against the weights wc, added into sum. */
static inline __attribute__((always_inline)) __m512 q8_chunk(__m512i wc, const q8_rows_t *q,
                                                             int64_t r, int64_t c, __m512 sum) {
    const __m512i zero = _mm512_setzero_si512();
    int64_t at = r * q->chunks + c;
    __m512i a = _mm512_loadu_si512((const void *)(q->magnitude + at * Q8_CHUNK));
    /* q·w = |q|·(w with q's sign): vpdpbusd multiplies unsigned by signed bytes. */
    __m512i signed_w = _mm512_mask_sub_epi8(wc, (__mmask64)q->negative[at], zero, wc);
    __m512i dot = _mm512_dpbusd_epi32(zero, a, signed_w);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(q->lane_scale + at * 16),
                           sum);
}

static inline __attribute__((always_inline)) void q8_dots(const int8_t *w, const q8_rows_t *q,
                                                          int64_t r0, int count, int64_t n,
                                                          float *out) {
    __m512 even[4], odd[4];
    for (int k = 0; k < count; k++) even[k] = odd[k] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 2 <= q->chunks; c += 2) {
        __m512i w0 = q8_weights(w, c, n), w1 = q8_weights(w, c + 1, n);
        for (int k = 0; k < count; k++) {
            even[k] = q8_chunk(w0, q, r0 + k, c, even[k]);
            odd[k] = q8_chunk(w1, q, r0 + k, c + 1, odd[k]);
        }
    }
    if (c < q->chunks) {
        __m512i w0 = q8_weights(w, c, n);
        for (int k = 0; k < count; k++) even[k] = q8_chunk(w0, q, r0 + k, c, even[k]);
    }
    /* GCC's reduce adds lane l to l + 8, then l + 4, l + 2, l + 1: lanes_sum's order. */
    for (int k = 0; k < count; k++) out[k] = _mm512_reduce_add_ps(_mm512_add_ps(even[k], odd[k]));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define Q8_PATH "avx2"

/* One block of 32: eight 32-bit lanes, lane j the exact sum q·w over bytes 4j..4j+3. */
static inline __m256 q8_block(__m256i w, const int8_t *value, const uint8_t *magnitude) {
    __m256i signed_w = _mm256_sign_epi8(w, _mm256_loadu_si256((const __m256i *)value));
    /* |q|·w pairs fit in 16 bits (2·127·127 < 32768), then pairs of pairs in 32. */
    __m256i pairs =
        _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)magnitude), signed_w);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

static inline __attribute__((always_inline)) void q8_dots(const int8_t *w, const q8_rows_t *q,
                                                          int64_t r0, int count, int64_t n,
                                                          float *out) {
    int64_t padded = q->chunks * Q8_CHUNK;
    /* [even or odd chunk][first or second block of the chunk], as the AVX-512 loop's lanes. */
    __m256 sum[4][2][2];
    for (int k = 0; k < count; k++)
        for (int e = 0; e < 2; e++) sum[k][e][0] = sum[k][e][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < n; b += ACTIVATION_BLOCK) {
        int64_t c = b / Q8_CHUNK;
        int second = (b % Q8_CHUNK) != 0;
        __m256i wb = _mm256_loadu_si256((const __m256i *)(w + b));
        for (int k = 0; k < count; k++) {
            int64_t r = r0 + k;
            __m256 dot = q8_block(wb, q->value + r * padded + b, q->magnitude + r * padded + b);
            __m256 scale = _mm256_loadu_ps(q->lane_scale + (r * q->chunks + c) * 16 + 8 * second);
            sum[k][c % 2][second] = _mm256_fmadd_ps(dot, scale, sum[k][c % 2][second]);
        }
    }
    for (int k = 0; k < count; k++) {
        float lanes[16];
        _mm256_storeu_ps(lanes, _mm256_add_ps(sum[k][0][0], sum[k][1][0]));
        _mm256_storeu_ps(lanes + 8, _mm256_add_ps(sum[k][0][1], sum[k][1][1]));
        out[k] = lanes_sum(lanes);
    }
}
#else
#define Q8_PATH "portable"

static inline void q8_dots(const int8_t *w, const q8_rows_t *q, int64_t r0, int count, int64_t n,
                           float *out) {
    int64_t padded = q->chunks * Q8_CHUNK;
    for (int k = 0; k < count; k++) {
        int64_t r = r0 + k;
        const int8_t *value = q->value + r * padded;
        const float *lane_scale = q->lane_scale + r * q->chunks * 16;
        /* Even and odd chunks apart, as the vector loops keep them. */
        float lanes[2][16] = {{0}};
        for (int64_t i0 = 0; i0 < n; i0 += 4) {
            int32_t dot = 0;
            for (int t = 0; t < 4; t++) dot += (int32_t)value[i0 + t] * (int32_t)w[i0 + t];
            int64_t c = i0 / Q8_CHUNK, lane = (i0 % Q8_CHUNK) / 4;
            lanes[c % 2][lane] += (float)dot * lane_scale[c * 16 + lane];
        }
        for (int l = 0; l < 16; l++) lanes[0][l] += lanes[1][l];
        out[k] = lanes_sum(lanes[0]);
    }
}
#endif

/* Which loop WEIGHTS_INT8_Q8 products take in this build (for benchmarks to record). */
const char *pie_q8_path(void) { return Q8_PATH; }

/* y[r, o] (+)= scale[o] · (Σ of q8 products) + b[o] for outputs o0..o1 of a row-major int8
 * [out, in] W: each weight row read once, in order, serving up to four input rows at a time
 * (the rest of the input rows read it again, from L1). A row's sum does not depend on which
 * rows share its pass. */
static void q8_rows_product(const projection_t *p, const q8_rows_t *q, float *y, int64_t rows,
                            int64_t in, int64_t out, int64_t o0, int64_t o1, int accumulate) {
    const int8_t *weight = p->weight;
    for (int64_t o = o0; o < o1; o++) {
        const int8_t *w = weight + o * in;
        for (int64_t r0 = 0; r0 < rows; r0 += 4) {
            int count = rows - r0 < 4 ? (int)(rows - r0) : 4;
            float sums[4];
            /* A constant count of one lets the inlined loop keep a decode step's two sums in
             * registers. */
            if (count == 1)
                q8_dots(w, q, r0, 1, in, sums);
            else
                q8_dots(w, q, r0, count, in, sums);
            for (int k = 0; k < count; k++)
                store(y + (r0 + k) * out, o, sums[k] * p->scales[o], p->bias, accumulate);
        }
    }
}

/* Weight rows whose partial sums wait before their lanes are added. Adding a row's lanes as soon
 * as its products were done put a chain of shuffles and adds between the loads of the rows
 * (measured when float32 rows were read four side by side: one-token products over the 0.5B
 * shape's matrices read them about 10 % slower than a plain sum over the same bytes, and at the
 * read's speed with the lanes added every 64 rows). */
#define DEFERRED_ROWS 64

/* y[r, o] (+)= W[o]·x[r] + b[o] for outputs o0..o1 of a row-major [out, in] W (float32,
 * bfloat16 or int8) and `rows` inputs x [rows, in], y [rows, out]: each weight row read once, in
 * order, for every input row (from L1 after the first), so the weights are read from memory once
 * however many rows there are; its lanes are added DEFERRED_ROWS weight rows later. */
static void rows_product(const projection_t *p, const float *x, float *y, int64_t rows,
                         int64_t in, int64_t out, int64_t o0, int64_t o1, int accumulate) {
    float partial[MAX_ROWS > DEFERRED_ROWS ? MAX_ROWS : DEFERRED_ROWS][LANES];
    int64_t chunk = DEFERRED_ROWS / rows;
    if (chunk < 1) chunk = 1;
    for (int64_t o = o0; o < o1; o += chunk) {
        int64_t end = o + chunk < o1 ? o + chunk : o1;
        for (int64_t j = o; j < end; j++)
            for (int64_t r = 0; r < rows; r++) {
                float *into = partial[(j - o) * rows + r];
                if (p->format == WEIGHTS_BFLOAT16)
                    row_partial_bfloat16((const uint16_t *)p->weight + j * in, x + r * in, in,
                                         into);
                else if (p->format == WEIGHTS_INT8)
                    row_partial_int8((const int8_t *)p->weight + j * in, x + r * in, in, into);
                else
                    row_partial_float32((const float *)p->weight + j * in, x + r * in, in, into);
            }
        for (int64_t j = o; j < end; j++)
            for (int64_t r = 0; r < rows; r++)
                store(y + r * out, j, scaled(p, j, lanes_sum(partial[(j - o) * rows + r])),
                      p->bias, accumulate);
    }
}

/* sum[r][c] = Σ_i x[r, i]·w[i, c] over one block of `width` output columns of a transposed
 * weight (row stride `out`) for `count` input rows: inlined with count and width constants for
 * the common cases, so that the sums stay in registers. */
static inline __attribute__((always_inline)) void column_block(
    const float *restrict w0, int64_t out, const float *restrict x, int64_t in, int64_t count,
    int64_t width, float sum[COLUMN_ROWS][COLUMN_BLOCK]) {
    for (int64_t i = 0; i < in; i++) {
        const float *restrict w = w0 + i * out;
        for (int64_t r = 0; r < count; r++) {
            float xi = x[r * in + i];
#pragma omp simd
            for (int64_t c = 0; c < width; c++) sum[r][c] += xi * w[c];
        }
    }
}

/* The same for W stored [in, out] row-major: a block of output columns at a time, accumulated
 * for up to COLUMN_ROWS inputs together over one pass down the block. */
static void columns_product(const projection_t *p, const float *x, float *y, int64_t rows,
                            int64_t in, int64_t out, int64_t o0, int64_t o1, int accumulate) {
    for (int64_t c0 = o0; c0 < o1; c0 += COLUMN_BLOCK) {
        int64_t width = o1 - c0 < COLUMN_BLOCK ? o1 - c0 : COLUMN_BLOCK;
        const float *w0 = (const float *)p->weight + c0;
        for (int64_t r0 = 0; r0 < rows; r0 += COLUMN_ROWS) {
            int64_t count = rows - r0 < COLUMN_ROWS ? rows - r0 : COLUMN_ROWS;
            const float *xr = x + r0 * in;
            float sum[COLUMN_ROWS][COLUMN_BLOCK] = {{0}};
            if (width < COLUMN_BLOCK)
                column_block(w0, out, xr, in, count, width, sum);
            else if (count == 1)
                column_block(w0, out, xr, in, 1, COLUMN_BLOCK, sum);
            else if (count == 2)
                column_block(w0, out, xr, in, 2, COLUMN_BLOCK, sum);
            else if (count == 3)
                column_block(w0, out, xr, in, 3, COLUMN_BLOCK, sum);
            else
                column_block(w0, out, xr, in, COLUMN_ROWS, COLUMN_BLOCK, sum);
            for (int64_t r = 0; r < count; r++)
                for (int64_t c = 0; c < width; c++)
                    store(y + (r0 + r) * out, c0 + c, sum[r][c], p->bias, accumulate);
        }
    }
}

/* x's rows as quantized for WEIGHTS_INT8_Q8 projections are in q8 (NULL where none reads x). */
static void product_range(const projection_t *p, const float *x, const q8_rows_t *q8, float *y,
                          int64_t rows, int64_t in, int64_t out, int64_t o0, int64_t o1,
                          int accumulate) {
    if (o0 >= o1) return;
    if (p->format == WEIGHTS_INT8_Q8)
        q8_rows_product(p, q8, y, rows, in, out, o0, o1, accumulate);
    else if (p->transposed)
        columns_product(p, x, y, rows, in, out, o0, o1, accumulate);
    else
        rows_product(p, x, y, rows, in, out, o0, o1, accumulate);
}

/* A part's share of out rows, in whole column blocks so transposed parts never split one. */
static void share(int64_t out, int part, int parts, int64_t *r0, int64_t *r1) {
    int64_t blocks = (out + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
    int64_t b0 = blocks * part / parts, b1 = blocks * (part + 1) / parts;
    *r0 = b0 * COLUMN_BLOCK < out ? b0 * COLUMN_BLOCK : out;
    *r1 = b1 * COLUMN_BLOCK < out ? b1 * COLUMN_BLOCK : out;
}

/* exp(x) for x <= 0 to about 2 ulp, branch-free so that its loops vectorize: 2^n · 2^f with
 * f in [-0.5, 0.5] from a degree-6 polynomial, 2^n built in the exponent bits. */
static inline float exp_nonpositive(float x) {
    float t = x * 1.44269504088896341f;
    t = t < -126.0f ? -126.0f : t;
    /* Round to nearest by adding and taking away 1.5 · 2^23 (|t| <= 126): roundf() would not
     * vectorize without -ffast-math, and alone took half the attention's time. */
    float n = (t + 12582912.0f) - 12582912.0f;
    float f = t - n;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* ---- the parallel parts of a step ---------------------------------------------------------- */

typedef struct {
    const projection_t *projection[3];
    float *y[3]; /* [rows, out] each */
    int64_t out[3];
    int count;
    const float *x; /* [rows, in] */
    int64_t rows, in;
    int accumulate;
    const q8_rows_t *q8; /* x quantized, for WEIGHTS_INT8_Q8 projections */
} products_t;

static void products_task(void *context, int part, int parts) {
    products_t *c = context;
    for (int j = 0; j < c->count; j++) {
        int64_t o0, o1;
        share(c->out[j], part, parts, &o0, &o1);
        product_range(c->projection[j], c->x, c->q8, c->y[j], c->rows, c->in, c->out[j], o0, o1,
                      c->accumulate);
    }
}

typedef struct {
    const layer_t *layer;
    const float *h;    /* [rows, hidden] */
    float *gate, *up; /* [rows, intermediate] */
    int64_t rows, hidden, intermediate;
    const q8_rows_t *q8; /* h quantized, for WEIGHTS_INT8_Q8 projections */
} mlp_in_t;

/* gate and up for the same outputs, then silu(gate)·up there, so no barrier between them. */
static void mlp_in_task(void *context, int part, int parts) {
    mlp_in_t *c = context;
    int64_t o0, o1, width = c->intermediate;
    share(width, part, parts, &o0, &o1);
    product_range(&c->layer->gate, c->h, c->q8, c->gate, c->rows, c->hidden, width, o0, o1, 0);
    product_range(&c->layer->up, c->h, c->q8, c->up, c->rows, c->hidden, width, o0, o1, 0);
    for (int64_t r = 0; r < c->rows; r++) {
        float *gate = c->gate + r * width;
        const float *up = c->up + r * width;
#pragma omp simd
        for (int64_t o = o0; o < o1; o++) {
            /* silu(g) = g·σ(g), with σ from exp(−|g|) <= 1 on either side of 0. */
            float g = gate[o];
            float e = exp_nonpositive(g < 0.0f ? g : -g);
            float sigmoid = g < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
            gate[o] = g * sigmoid * up[o];
        }
    }
}

typedef struct {
    const float *q; /* [rows, heads, head_dim], rotated */
    const void *keys, *values;
    float *out;    /* [rows, heads, head_dim] */
    float *scores; /* [kv_heads, rows, groups, capacity] */
    const int64_t *lengths; /* row r sees slots 0..lengths[r]-1; increasing */
    int64_t rows, heads, kv_heads, head_dim, capacity;
    int64_t slab_bf16;
    float *widened; /* [kv_heads, SLOT_BLOCK, head_dim]: a bfloat16 block made float32 */
} attention_t;

#if defined(__AVX2__) && defined(__FMA__)
#define VECTOR_ATTENTION
/* Attention's sums in AVX2 for a head_dim that is a multiple of 8. A key's score is one 8-lane
 * sum of products, its lanes then added in the tree ((0+1)+(2+3))+((4+5)+(6+7)): eight keys at
 * once through hadd, a lone key in scalar code, which give the same bits. So a token's scores do
 * not depend on which of its keys fall in a block of eight, which moves with the number of
 * tokens in the pass: a verify pass must give the logits of one-token steps exactly. The 16-lane
 * dots of the portable code spent more time adding their lanes than multiplying a 64-dim key. */
static inline __attribute__((always_inline)) void eight_key_scores(const float *keys,
                                                                   const float *q, int64_t d,
                                                                   float scale, float *out) {
    __m256 sum[8];
    for (int j = 0; j < 8; j++) sum[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) {
        __m256 qi = _mm256_loadu_ps(q + i);
        for (int j = 0; j < 8; j++)
            sum[j] = _mm256_fmadd_ps(_mm256_loadu_ps(keys + j * d + i), qi, sum[j]);
    }
    /* hadd(a, b) = a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7. */
    __m256 ab = _mm256_hadd_ps(sum[0], sum[1]), cd = _mm256_hadd_ps(sum[2], sum[3]);
    __m256 ef = _mm256_hadd_ps(sum[4], sum[5]), gh = _mm256_hadd_ps(sum[6], sum[7]);
    __m256 abcd = _mm256_hadd_ps(ab, cd), efgh = _mm256_hadd_ps(ef, gh);
    __m256 low = _mm256_permute2f128_ps(abcd, efgh, 0x20);
    __m256 high = _mm256_permute2f128_ps(abcd, efgh, 0x31);
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_add_ps(low, high), _mm256_set1_ps(scale)));
}

static inline __attribute__((always_inline)) float one_key_score(const float *key,
                                                                 const float *q, int64_t d,
                                                                 float scale) {
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8)
        sum = _mm256_fmadd_ps(_mm256_loadu_ps(key + i), _mm256_loadu_ps(q + i), sum);
    float a[8];
    _mm256_storeu_ps(a, sum);
    return (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) * scale;
}

/* og[0..d) += Σ p[t]·v[t] over `count` value rows d apart, 64 dims at a time held in registers
 * across the rows (the portable loop loaded and stored og for every row). */
static inline __attribute__((always_inline)) void add_weighted_values(const float *v,
                                                                      const float *p,
                                                                      int64_t count, int64_t d,
                                                                      float *og) {
    for (int64_t c0 = 0; c0 < d; c0 += 64) {
        int64_t vectors = (d - c0 < 64 ? d - c0 : 64) / 8;
        __m256 sum[8];
        for (int64_t c = 0; c < vectors; c++) sum[c] = _mm256_loadu_ps(og + c0 + 8 * c);
        for (int64_t t = 0; t < count; t++) {
            __m256 pt = _mm256_set1_ps(p[t]);
            const float *vt = v + t * d + c0;
            for (int64_t c = 0; c < vectors; c++)
                sum[c] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * c), sum[c]);
        }
        for (int64_t c = 0; c < vectors; c++) _mm256_storeu_ps(og + c0 + 8 * c, sum[c]);
    }
}
#endif

/* One K/V head's attention for its group of query heads in every row, with head_dim `d`:
 * inlined with d a constant for the common sizes. Each key is read from memory once and from L1
 * by every query of every row; values go by blocks of slots, read from memory once and then
 * from L2 by each query. */
static inline __attribute__((always_inline)) void attend(
    const float *restrict q, int64_t stride, const void *keys_at, const void *values_at,
    int bf16, float *restrict widened, float *restrict out, float *restrict scores,
    int64_t rows, const int64_t *restrict lengths, int64_t groups, int64_t d,
    int64_t capacity) {
    float scale = (float)(1.0 / sqrt((double)d));
    int64_t longest = lengths[rows - 1];
    /* Keys by blocks of slots, a bfloat16 block widened first; four keys at a time, and a row
     * whose length ends inside the four gets scores past its end, which its softmax does not
     * read. */
    for (int64_t b0 = 0; b0 < longest; b0 += SLOT_BLOCK) {
        int64_t b1 = b0 + SLOT_BLOCK < longest ? b0 + SLOT_BLOCK : longest;
        const float *restrict keys = (const float *)keys_at + b0 * d;
        if (bf16) {
            widen((const uint16_t *)keys_at + b0 * d, widened, (b1 - b0) * d);
            keys = widened;
        }
        int64_t s = b0;
#ifdef VECTOR_ATTENTION
        if (d % 8 == 0) {
            for (; s + 8 <= b1; s += 8)
                for (int64_t r = 0; r < rows; r++) {
                    if (s >= lengths[r]) continue;
                    for (int64_t g = 0; g < groups; g++)
                        eight_key_scores(keys + (s - b0) * d, q + r * stride + g * d, d, scale,
                                         scores + (r * groups + g) * capacity + s);
                }
            for (; s < b1; s++)
                for (int64_t r = 0; r < rows; r++)
                    if (s < lengths[r])
                        for (int64_t g = 0; g < groups; g++)
                            scores[(r * groups + g) * capacity + s] =
                                one_key_score(keys + (s - b0) * d, q + r * stride + g * d, d, scale);
        }
#endif
        for (; s + 4 <= b1; s += 4)
            for (int64_t r = 0; r < rows; r++) {
                if (s >= lengths[r]) continue;
                for (int64_t g = 0; g < groups; g++) {
                    float a[4];
                    dot_four_rows(keys + (s - b0) * d, q + r * stride + g * d, d, a);
                    float *sg = scores + (r * groups + g) * capacity + s;
                    for (int j = 0; j < 4; j++) sg[j] = a[j] * scale;
                }
            }
        for (; s < b1; s++)
            for (int64_t r = 0; r < rows; r++)
                if (s < lengths[r])
                    for (int64_t g = 0; g < groups; g++)
                        scores[(r * groups + g) * capacity + s] =
                            dot(q + r * stride + g * d, keys + (s - b0) * d, d) * scale;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < groups; g++) {
            float *restrict sg = scores + (r * groups + g) * capacity;
            int64_t n = lengths[r];
            float top = -INFINITY;
#pragma omp simd reduction(max : top)
            for (int64_t t = 0; t < n; t++) top = sg[t] > top ? sg[t] : top;
            float total = 0.0f;
#pragma omp simd reduction(+ : total)
            for (int64_t t = 0; t < n; t++) {
                float e = exp_nonpositive(sg[t] - top);
                sg[t] = e;
                total += e;
            }
            float inverse = 1.0f / total;
#pragma omp simd
            for (int64_t t = 0; t < n; t++) sg[t] *= inverse;
            float *restrict og = out + r * stride + g * d;
#pragma omp simd
            for (int64_t i = 0; i < d; i++) og[i] = 0.0f;
        }
    for (int64_t s0 = 0; s0 < longest; s0 += SLOT_BLOCK) {
        const float *restrict values = (const float *)values_at + s0 * d;
        int64_t end = s0 + SLOT_BLOCK < longest ? s0 + SLOT_BLOCK : longest;
        if (bf16) {
            widen((const uint16_t *)values_at + s0 * d, widened, (end - s0) * d);
            values = widened;
        }
        /* Each query of each row sums over the block a sub-block at a time, which stays in L1
         * for all of them. */
        int64_t sub = VALUE_BYTES / (int64_t)sizeof(float) / d;
        if (sub < 1) sub = 1;
        for (int64_t v0 = s0; v0 < end; v0 += sub)
            for (int64_t r = 0; r < rows; r++) {
                int64_t v1 = v0 + sub < end ? v0 + sub : end;
                if (v1 > lengths[r]) v1 = lengths[r];
                if (v1 <= v0) continue;
                for (int64_t g = 0; g < groups; g++) {
                    const float *restrict sg = scores + (r * groups + g) * capacity;
                    float *restrict og = out + r * stride + g * d;
#ifdef VECTOR_ATTENTION
                    if (d % 8 == 0) {
                        add_weighted_values(values + (v0 - s0) * d, sg + v0, v1 - v0, d, og);
                        continue;
                    }
#endif
                    for (int64_t t = v0; t < v1; t++) {
                        const float *restrict v = values + (t - s0) * d;
                        float p = sg[t];
#pragma omp simd
                        for (int64_t i = 0; i < d; i++) og[i] += p * v[i];
                    }
                }
            }
    }
}

static void attention_task(void *context, int part, int parts) {
    attention_t *c = context;
    int64_t groups = c->heads / c->kv_heads, d = c->head_dim, stride = c->heads * d;
    int64_t element = c->slab_bf16 ? 2 : 4;
    for (int64_t kv = part; kv < c->kv_heads; kv += parts) {
        const char *keys = (const char *)c->keys + kv * c->capacity * d * element;
        const char *values = (const char *)c->values + kv * c->capacity * d * element;
        const float *q = c->q + kv * groups * d;
        float *out = c->out + kv * groups * d;
        float *scores = c->scores + kv * c->rows * groups * c->capacity;
        float *widened = c->widened + kv * SLOT_BLOCK * d;
        int bf16 = c->slab_bf16 != 0;
        if (d == 64)
            attend(q, stride, keys, values, bf16, widened, out, scores, c->rows, c->lengths,
                   groups, 64, c->capacity);
        else if (d == 128)
            attend(q, stride, keys, values, bf16, widened, out, scores, c->rows, c->lengths,
                   groups, 128, c->capacity);
        else
            attend(q, stride, keys, values, bf16, widened, out, scores, c->rows, c->lengths,
                   groups, d, c->capacity);
    }
}

/* rotated = x·cos + roll(x, d/2)·signed_sin, the convention of cache_engine/kv/llama_step.py. */
static void rotate(float *x, const float *cos, const float *signed_sin, int64_t d) {
    float rolled[1024];
    int64_t half = d / 2;
    for (int64_t i = 0; i < d; i++) rolled[i] = x[(i + half) % d];
    for (int64_t i = 0; i < d; i++) x[i] = x[i] * cos[i] + rolled[i] * signed_sin[i];
}

/* ---- the step ------------------------------------------------------------------------------ */

/* The longest input row a product of the model reads. */
static int64_t widest_input(const model_t *m) {
    int64_t widest = m->hidden > m->intermediate ? m->hidden : m->intermediate;
    return widest > m->heads * m->head_dim ? widest : m->heads * m->head_dim;
}

/* Scratch floats a pass of `rows` tokens needs for a slab of `capacity` slots. */
int64_t pie_forward_scratch_floats(const model_t *m, int64_t rows) {
    int64_t qkv = (m->heads + 2 * m->kv_heads) * m->head_dim;
    return rows * (2 * m->hidden + qkv + m->heads * m->head_dim + 2 * m->intermediate +
                   m->heads * m->capacity) +
           m->kv_heads * SLOT_BLOCK * m->head_dim +
           (q8_scratch_bytes(rows, widest_input(m)) + 3) / 4;
}

static pthread_mutex_t step_lock = PTHREAD_MUTEX_INITIALIZER;

static void forward(const model_t *m, int64_t rows, const int64_t *tokens, const int64_t *slots,
                    const float *cos, const float *signed_sin, float *logits, int64_t logit_rows,
                    float *scratch, int threads);

/* Runs tokens[0..rows) at slots[0..rows) (their positions, increasing): writes their keys and
 * values into every layer's slab at those slots, and the logits [logit_rows, vocab] of the last
 * logit_rows tokens into `logits`. Token r sees the slab's slots 0..slots[r], the earlier tokens
 * of the call included. cos and signed_sin are the rotary rows [rows, head_dim] of those
 * positions. Returns 0, or -1 if the arguments do not fit. */
int pie_forward(const model_t *m, int64_t rows, const int64_t *tokens, const int64_t *slots,
                const float *cos, const float *signed_sin, float *logits, int64_t logit_rows,
                float *scratch, int threads) {
    if (rows < 1 || rows > MAX_ROWS || logit_rows < 1 || logit_rows > rows ||
        m->head_dim > 1024 || m->kv_heads < 1 || m->heads % m->kv_heads != 0 || threads < 1)
        return -1;
    for (int64_t r = 0; r < rows; r++)
        if (tokens[r] < 0 || tokens[r] >= m->vocab || slots[r] < 0 || slots[r] >= m->capacity ||
            (r > 0 && slots[r] <= slots[r - 1]))
            return -1;
    /* One pool: passes from two threads of the caller take turns. */
    pthread_mutex_lock(&step_lock);
    forward(m, rows, tokens, slots, cos, signed_sin, logits, logit_rows, scratch,
            pool_threads(threads));
    pthread_mutex_unlock(&step_lock);
    return 0;
}

static void forward(const model_t *m, int64_t rows, const int64_t *tokens, const int64_t *slots,
                    const float *cos, const float *signed_sin, float *logits, int64_t logit_rows,
                    float *scratch, int threads) {
    int64_t hidden = m->hidden, d = m->head_dim, inter = m->intermediate;
    int64_t q_size = m->heads * d, kv_size = m->kv_heads * d;
    float *x = scratch, *h = x + rows * hidden, *q = h + rows * hidden, *k = q + rows * q_size;
    float *v = k + rows * kv_size, *attended = v + rows * kv_size;
    float *gate = attended + rows * q_size, *up = gate + rows * inter, *scores = up + rows * inter;
    float *widened = scores + rows * m->heads * m->capacity;
    void *q8_scratch = widened + m->kv_heads * SLOT_BLOCK * d;
    q8_rows_t q8_storage = q8_rows_at(q8_scratch, rows, widest_input(m));
    /* Where a projection reads quantized activations, its input is quantized once, here, for
     * every thread; the others read the float rows. */
    q8_rows_t *q8 = &q8_storage;
    int64_t lengths[MAX_ROWS];
    for (int64_t r = 0; r < rows; r++) {
        lengths[r] = slots[r] + 1;
        int64_t row = tokens[r] * m->embed_row;
        for (int64_t i = 0; i < hidden; i++)
            x[r * hidden + i] =
                m->embed_bf16 ? bf16_to_float(((const uint16_t *)m->embed)[row + i * m->embed_col])
                              : ((const float *)m->embed)[row + i * m->embed_col];
    }
    for (int64_t l = 0; l < m->layers; l++) {
        const layer_t *w = &m->layer[l];
        for (int64_t r = 0; r < rows; r++)
            rms_norm(x + r * hidden, w->input_norm, h + r * hidden, hidden, m->eps);
        if (w->q.format == WEIGHTS_INT8_Q8 || w->k.format == WEIGHTS_INT8_Q8 ||
            w->v.format == WEIGHTS_INT8_Q8)
            quantize_rows(h, rows, hidden, q8);
        products_t qkv = {{&w->q, &w->k, &w->v}, {q, k, v}, {q_size, kv_size, kv_size}, 3, h,
                          rows, hidden, 0, q8};
        run_parallel(products_task, &qkv, threads);
        for (int64_t r = 0; r < rows; r++) {
            const float *c = cos + r * d, *s = signed_sin + r * d;
            for (int64_t head = 0; head < m->heads; head++)
                rotate(q + r * q_size + head * d, c, s, d);
            for (int64_t head = 0; head < m->kv_heads; head++) {
                float *kr = k + r * kv_size + head * d, *vr = v + r * kv_size + head * d;
                int64_t at = (head * m->capacity + slots[r]) * d;
                rotate(kr, c, s, d);
                if (m->slab_bf16) {
                    uint16_t *keys = (uint16_t *)w->keys + at, *values = (uint16_t *)w->values + at;
                    for (int64_t i = 0; i < d; i++) {
                        keys[i] = float_to_bf16(kr[i]);
                        values[i] = float_to_bf16(vr[i]);
                    }
                } else {
                    memcpy((float *)w->keys + at, kr, d * sizeof(float));
                    memcpy((float *)w->values + at, vr, d * sizeof(float));
                }
            }
        }
        attention_t attention = {q,        w->keys,     w->values, attended,    scores,
                                 lengths,  rows,        m->heads,  m->kv_heads, d,
                                 m->capacity, m->slab_bf16, widened};
        run_parallel(attention_task, &attention, threads);
        if (w->o.format == WEIGHTS_INT8_Q8) quantize_rows(attended, rows, q_size, q8);
        products_t o = {{&w->o}, {x}, {hidden}, 1, attended, rows, q_size, 1, q8};
        run_parallel(products_task, &o, threads);
        for (int64_t r = 0; r < rows; r++)
            rms_norm(x + r * hidden, w->post_attention_norm, h + r * hidden, hidden, m->eps);
        if (w->gate.format == WEIGHTS_INT8_Q8 || w->up.format == WEIGHTS_INT8_Q8)
            quantize_rows(h, rows, hidden, q8);
        mlp_in_t mlp = {w, h, gate, up, rows, hidden, inter, q8};
        run_parallel(mlp_in_task, &mlp, threads);
        if (w->down.format == WEIGHTS_INT8_Q8) quantize_rows(gate, rows, inter, q8);
        products_t down = {{&w->down}, {x}, {hidden}, 1, gate, rows, inter, 1, q8};
        run_parallel(products_task, &down, threads);
    }
    int64_t first = rows - logit_rows;
    for (int64_t r = first; r < rows; r++)
        rms_norm(x + r * hidden, m->final_norm, h + r * hidden, hidden, m->eps);
    if (m->lm_head.format == WEIGHTS_INT8_Q8)
        quantize_rows(h + first * hidden, logit_rows, hidden, q8);
    products_t head = {{&m->lm_head}, {logits}, {m->vocab}, 1, h + first * hidden, logit_rows,
                       hidden, 0, q8};
    run_parallel(products_task, &head, threads);
}
