/* Classify one 8x8 digit with the model in components/digits and print the int8 scores and
 * the predicted digit on the console. */
#include <stdint.h>
#include <stdio.h>

#include "digits.h"
#include "sample_digit.h"

void app_main(void)
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
        return;
    }

    printf("scores:");
    for (i = 0; i < DIGITS_OUTPUT_0_SIZE; ++i) {
        printf(" %d", scores[i]);
        if (scores[i] > scores[predicted]) {
            predicted = i;
        }
    }
    printf("\npredicted digit %u (label %d)\n", predicted, SAMPLE_DIGIT_LABEL);
}
