/* Classify one 8x8 digit with the model that bonsai-mcu generated into digits/ and print the
 * int8 scores and the predicted digit. The same file builds for the host and for Cortex-M4
 * (README.md). */
#include <stdint.h>
#include <stdio.h>

#include "digits.h"
#include "sample_digit.h"

int main(void)
{
    int8_t input[DIGITS_INPUT_0_SIZE];
    int8_t scores[DIGITS_OUTPUT_0_SIZE];
    unsigned i;
    unsigned predicted = 0;

    for (i = 0; i < DIGITS_INPUT_0_SIZE; ++i) {
        float intensity = (float)sample_digit[i] / 16.0f;
        input[i] = digits_quantize(intensity, DIGITS_INPUT_0_SCALE, DIGITS_INPUT_0_ZERO_POINT);
    }
    if (digits_run(input, scores) != 0) {
        printf("digits_run failed\n");
        return 1;
    }

    printf("scores:");
    for (i = 0; i < DIGITS_OUTPUT_0_SIZE; ++i) {
        printf(" %d", scores[i]);
        if (scores[i] > scores[predicted]) {
            predicted = i;
        }
    }
    printf("\npredicted digit %u (label %d)\n", predicted, SAMPLE_DIGIT_LABEL);
    return 0;
}
