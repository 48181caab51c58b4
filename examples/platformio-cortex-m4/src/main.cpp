// Classify one 8x8 digit with the model that bonsai-mcu generated into lib/digits, and print
// the int8 scores and the predicted digit on the serial port (115200 baud).
#include <Arduino.h>

#include "digits.h"
#include "sample_digit.h"

void setup()
{
    Serial.begin(115200);
    // Boards with native USB (Nano 33 BLE) open the port only when a terminal attaches.
    while (!Serial) {
    }

    int8_t input[DIGITS_INPUT_0_SIZE];
    int8_t scores[DIGITS_OUTPUT_0_SIZE];
    for (unsigned i = 0; i < DIGITS_INPUT_0_SIZE; ++i) {
        float intensity = sample_digit[i] / 16.0f;
        input[i] = digits_quantize(intensity, DIGITS_INPUT_0_SCALE, DIGITS_INPUT_0_ZERO_POINT);
    }
    if (digits_run(input, scores) != 0) {
        Serial.println("digits_run failed");
        return;
    }

    unsigned predicted = 0;
    Serial.print("scores:");
    for (unsigned i = 0; i < DIGITS_OUTPUT_0_SIZE; ++i) {
        Serial.print(" ");
        Serial.print((int)scores[i]);
        if (scores[i] > scores[predicted]) {
            predicted = i;
        }
    }
    Serial.println();
    Serial.print("predicted digit ");
    Serial.print(predicted);
    Serial.print(" (label ");
    Serial.print(SAMPLE_DIGIT_LABEL);
    Serial.println(")");
}

void loop()
{
}
