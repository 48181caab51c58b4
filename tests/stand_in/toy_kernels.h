/* Private header of the toy stand-in model (tests only), shaped like NAME_kernels.h. */
#ifndef TOY_KERNELS_H
#define TOY_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "toy.h"

#ifndef TOY_WEIGHTS_SECTION
#define TOY_WEIGHTS_SECTION ".rodata.bonsai_weights"
#endif
#ifndef TOY_ARENA_SECTION
#define TOY_ARENA_SECTION ".bss.bonsai_arena"
#endif
#define TOY_WEIGHTS_ATTRIBUTE __attribute__((section(TOY_WEIGHTS_SECTION), aligned(4)))
#define TOY_ARENA_ATTRIBUTE __attribute__((section(TOY_ARENA_SECTION), aligned(4)))

extern const int8_t toy_dense_weights[TOY_OUTPUT_0_SIZE][TOY_INPUT_0_SIZE];
extern const int32_t toy_dense_bias[TOY_OUTPUT_0_SIZE];

/* accumulators: TOY_OUTPUT_0_SIZE int32 values of scratch memory from the arena. */
void toy_dense(const int8_t *input, int32_t *accumulators, int8_t *output);
void toy_add(const int8_t *a, const int8_t *b, int8_t *output, size_t count);

#endif
