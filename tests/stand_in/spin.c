/* Two instructions per iteration (decrement, branch if not zero), so N more iterations retire
 * exactly 2 * N more instructions. */
#include <string.h>

#include "spin.h"

__attribute__((noinline)) static void spin_loop(uint32_t iterations)
{
#if defined(__riscv)
    __asm__ volatile("1: addi %0, %0, -1\n"
                     "   bnez %0, 1b\n"
                     : "+r"(iterations));
#elif defined(__ARM_ARCH_ISA_THUMB) && __ARM_ARCH_ISA_THUMB == 1
    /* gcc hands ARMv6-M inline assembly to the assembler in divided syntax, where
       `sub rN, #1` is the flag-setting 16-bit encoding. */
    __asm__ volatile("1: sub %0, #1\n"
                     "   bne 1b\n"
                     : "+l"(iterations));
#elif defined(__thumb2__)
    __asm__ volatile("1: subs %0, %0, #1\n"
                     "   bne 1b\n"
                     : "+r"(iterations));
#else
#error "spin.c: no counted loop for this architecture"
#endif
}

int spin_run(const int8_t *input_0, int8_t *output_0)
{
    uint32_t iterations = (uint32_t)(uint8_t)input_0[0] | (uint32_t)(uint8_t)input_0[1] << 8 |
                          (uint32_t)(uint8_t)input_0[2] << 16 | (uint32_t)(uint8_t)input_0[3] << 24;

    if (iterations != 0) {
        spin_loop(iterations);
    }
    memcpy(output_0, input_0, SPIN_INPUT_0_SIZE);
    return 0;
}
