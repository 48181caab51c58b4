/* Stand-in for a generated NAME.c (tests only): the arena and the call sequence. */
#include "toy_kernels.h"

#define TOY_ARENA_SIZE (TOY_OUTPUT_0_SIZE * sizeof(int32_t))

static uint8_t toy_arena[TOY_ARENA_SIZE] TOY_ARENA_ATTRIBUTE;

int toy_run(const int8_t *input_0, const int8_t *input_1, int8_t *output_0, int8_t *output_1)
{
    toy_dense(input_0, (int32_t *)(void *)toy_arena, output_0);
    toy_add(input_0, input_1, output_1, TOY_INPUT_0_SIZE);
    return 0;
}
