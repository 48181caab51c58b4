/*
 * Generic harness for the property tests: runs one kernel named at run time
 * on parameters and arrays read from a file, so one build serves every
 * example. Every array is copied into a heap block of exactly its size, so
 * AddressSanitizer reports a kernel that reads or writes one element too far.
 *
 * Request file (native-endian int32 words unless noted):
 *   kernel id; n; n int32 parameters;
 *   m; m arrays, each: element size in bytes, element count, raw elements;
 *   element size and element count of the output.
 * The raw output elements are written to the file named by argv[2].
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prop_kernels.h"

enum {
    CONV2D = 1, DENSE = 2, ADD = 3, AVERAGE_POOL = 4, MAX_POOL = 5, SOFTMAX = 6, CLAMP = 7, LOOKUP = 8,
    TRANSPOSE = 9,
    CONV2D_F32 = 11, DENSE_F32 = 12, ADD_F32 = 13, AVERAGE_POOL_F32 = 14, MAX_POOL_F32 = 15, SOFTMAX_F32 = 16,
    CLAMP_F32 = 17, UNARY_F32 = 18, TRANSPOSE_F32 = 19
};

#define MAX_PARAMS 64
#define MAX_ARRAYS 8

static FILE *request;

static int32_t read_word(void)
{
    int32_t word;
    if (fread(&word, sizeof word, 1, request) != 1) {
        fprintf(stderr, "truncated request\n");
        exit(2);
    }
    return word;
}

/* Heap block of exactly `count` elements; malloc(0) is avoided with a 1-byte block. */
static void *read_array(int32_t *count_out)
{
    const int32_t size = read_word();
    const int32_t count = read_word();
    void *block = malloc((size_t)size * (size_t)count + (count == 0));
    if (block == NULL || fread(block, (size_t)size, (size_t)count, request) != (size_t)count) {
        fprintf(stderr, "cannot read an array of %d elements\n", count);
        exit(2);
    }
    *count_out = count;
    return block;
}

static void set_requant(prop_requant *q, const int32_t *p, void **arrays)
{
    q->weights = arrays[0];
    q->multipliers = (const int32_t *)arrays[1];
    q->bias = (const int64_t *)arrays[2];
    q->shift = p[0];
    q->group_size = p[1];
    q->input_zero_point = p[2];
    q->output_zero_point = p[3];
    q->act_min = p[4];
    q->act_max = p[5];
    q->weight_format = (uint8_t)p[6];
    q->per_tensor = (uint8_t)p[7];
}

static void set_bounds(prop_bounds_f32 *bounds, const int32_t *flags, const float *values)
{
    bounds->low = values[0];
    bounds->high = values[1];
    bounds->has_low = (uint8_t)flags[0];
    bounds->has_high = (uint8_t)flags[1];
}

/* Fill six out_shape values then two sets of six strides from p. */
static void copy6(int32_t *target, const int32_t *p)
{
    memcpy(target, p, 6 * sizeof *target);
}

int main(int argc, char **argv)
{
    int32_t p[MAX_PARAMS];
    void *arrays[MAX_ARRAYS];
    int32_t counts[MAX_ARRAYS];
    int32_t kernel, n, m, i, output_size, output_count;
    void *output;
    FILE *out;

    if (argc != 3 || (request = fopen(argv[1], "rb")) == NULL) {
        fprintf(stderr, "usage: %s REQUEST OUTPUT\n", argv[0]);
        return 2;
    }
    kernel = read_word();
    n = read_word();
    if (n < 0 || n > MAX_PARAMS) {
        return 2;
    }
    for (i = 0; i < n; ++i) {
        p[i] = read_word();
    }
    m = read_word();
    if (m < 0 || m > MAX_ARRAYS) {
        return 2;
    }
    for (i = 0; i < m; ++i) {
        arrays[i] = read_array(&counts[i]);
    }
    output_size = read_word();
    output_count = read_word();
    output = malloc((size_t)output_size * (size_t)output_count + (output_count == 0));
    if (output == NULL) {
        return 2;
    }
    fclose(request);

    switch (kernel) {
    case CONV2D: {
        prop_conv2d_params c;
        set_requant(&c.q, p, arrays);
        c.in_h = p[8]; c.in_w = p[9]; c.in_channels = p[10];
        c.out_h = p[11]; c.out_w = p[12]; c.out_channels = p[13];
        c.kernel_h = p[14]; c.kernel_w = p[15]; c.stride_h = p[16]; c.stride_w = p[17];
        c.dilation_h = p[18]; c.dilation_w = p[19]; c.pad_top = p[20]; c.pad_left = p[21]; c.group = p[22];
        prop_conv2d(&c, (const int8_t *)arrays[3], (int8_t *)output);
        break;
    }
    case DENSE: {
        prop_dense_params d;
        set_requant(&d.q, p, arrays);
        d.rows = p[8]; d.depth = p[9]; d.out_features = p[10];
        prop_dense(&d, (const int8_t *)arrays[3], (int8_t *)output);
        break;
    }
    case ADD: {
        prop_add_params a;
        copy6(a.out_shape, p);
        copy6(a.a_strides, p + 6);
        copy6(a.b_strides, p + 12);
        a.a_zero_point = p[18]; a.b_zero_point = p[19]; a.a_multiplier = p[20]; a.b_multiplier = p[21];
        a.shift = p[22]; a.output_zero_point = p[23]; a.act_min = p[24]; a.act_max = p[25];
        prop_add(&a, (const int8_t *)arrays[0], (const int8_t *)arrays[1], (int8_t *)output);
        break;
    }
    case AVERAGE_POOL:
    case MAX_POOL: {
        prop_pool_params q;
        q.in_h = p[0]; q.in_w = p[1]; q.channels = p[2]; q.out_h = p[3]; q.out_w = p[4];
        q.kernel_h = p[5]; q.kernel_w = p[6]; q.stride_h = p[7]; q.stride_w = p[8];
        q.pad_top = p[9]; q.pad_left = p[10]; q.pad_bottom = p[11]; q.pad_right = p[12];
        q.count_include_pad = p[13]; q.input_zero_point = p[14];
        if (kernel == AVERAGE_POOL) {
            prop_average_pool(&q, (const int8_t *)arrays[0], (int8_t *)output);
        } else {
            prop_max_pool(&q, (const int8_t *)arrays[0], (int8_t *)output);
        }
        break;
    }
    case SOFTMAX: {
        prop_softmax_params s;
        s.exp_table = (const uint32_t *)arrays[0];
        s.rows = p[0];
        s.row_size = p[1];
        prop_softmax(&s, (const int8_t *)arrays[1], (int8_t *)output);
        break;
    }
    case CLAMP:
        prop_clamp_tensor((const int8_t *)arrays[0], (int8_t *)output, p[0], p[1], p[2]);
        break;
    case LOOKUP:
        prop_lookup((const int8_t *)arrays[0], (const int8_t *)arrays[1], (int8_t *)output, p[0]);
        break;
    case TRANSPOSE: {
        prop_transpose_params t;
        copy6(t.out_shape, p);
        copy6(t.in_strides, p + 6);
        prop_transpose(&t, (const int8_t *)arrays[0], (int8_t *)output);
        break;
    }
    case CONV2D_F32: {
        prop_conv2d_f32_params c;
        c.weights = (const float *)arrays[0];
        c.bias = (const float *)arrays[1];
        c.in_h = p[0]; c.in_w = p[1]; c.in_channels = p[2];
        c.out_h = p[3]; c.out_w = p[4]; c.out_channels = p[5];
        c.kernel_h = p[6]; c.kernel_w = p[7]; c.stride_h = p[8]; c.stride_w = p[9];
        c.dilation_h = p[10]; c.dilation_w = p[11]; c.pad_top = p[12]; c.pad_left = p[13]; c.group = p[14];
        set_bounds(&c.bounds, p + 15, (const float *)arrays[3]);
        prop_conv2d_f32(&c, (const float *)arrays[2], (float *)output);
        break;
    }
    case DENSE_F32: {
        prop_dense_f32_params d;
        d.weights = (const float *)arrays[0];
        d.bias = (const float *)arrays[1];
        d.rows = p[0]; d.depth = p[1]; d.out_features = p[2];
        set_bounds(&d.bounds, p + 3, (const float *)arrays[3]);
        prop_dense_f32(&d, (const float *)arrays[2], (float *)output);
        break;
    }
    case ADD_F32: {
        prop_add_f32_params a;
        copy6(a.out_shape, p);
        copy6(a.a_strides, p + 6);
        copy6(a.b_strides, p + 12);
        set_bounds(&a.bounds, p + 18, (const float *)arrays[2]);
        prop_add_f32(&a, (const float *)arrays[0], (const float *)arrays[1], (float *)output);
        break;
    }
    case AVERAGE_POOL_F32:
    case MAX_POOL_F32: {
        prop_pool_f32_params q;
        q.in_h = p[0]; q.in_w = p[1]; q.channels = p[2]; q.out_h = p[3]; q.out_w = p[4];
        q.kernel_h = p[5]; q.kernel_w = p[6]; q.stride_h = p[7]; q.stride_w = p[8];
        q.pad_top = p[9]; q.pad_left = p[10]; q.pad_bottom = p[11]; q.pad_right = p[12];
        q.count_include_pad = p[13];
        if (kernel == AVERAGE_POOL_F32) {
            prop_average_pool_f32(&q, (const float *)arrays[0], (float *)output);
        } else {
            prop_max_pool_f32(&q, (const float *)arrays[0], (float *)output);
        }
        break;
    }
    case SOFTMAX_F32:
        prop_softmax_f32((const float *)arrays[0], (float *)output, p[0], p[1]);
        break;
    case CLAMP_F32: {
        prop_bounds_f32 bounds;
        set_bounds(&bounds, p + 1, (const float *)arrays[1]);
        prop_clamp_tensor_f32(&bounds, (const float *)arrays[0], (float *)output, p[0]);
        break;
    }
    case UNARY_F32: {
        const float *alpha_beta = (const float *)arrays[1];
        prop_unary_f32(p[0], alpha_beta[0], alpha_beta[1], (const float *)arrays[0], (float *)output, p[1]);
        break;
    }
    case TRANSPOSE_F32: {
        prop_transpose_f32_params t;
        copy6(t.out_shape, p);
        copy6(t.in_strides, p + 6);
        prop_transpose_f32(&t, (const float *)arrays[0], (float *)output);
        break;
    }
    default:
        fprintf(stderr, "unknown kernel %d\n", kernel);
        return 2;
    }

    out = fopen(argv[2], "wb");
    if (out == NULL || fwrite(output, (size_t)output_size, (size_t)output_count, out) != (size_t)output_count) {
        return 3;
    }
    for (i = 0; i < m; ++i) {
        free(arrays[i]);
    }
    free(output);
    return fclose(out) == 0 ? 0 : 3;
}
