/*
 * The AI-Thinker ESP32-CAM's ECMA-419 host provider ("embedded:provider/builtin"
 * for this custom target): what the board offers to code that asks for the
 * device's default buses and pins rather than naming them.
 *
 * The SDK's ESP32 I/O manifest maps the provider to the target directory's
 * host/provider, so a custom target must bring its own. Most of the module's
 * GPIOs belong to the camera (SCCB on 26/27, data, sync and clock lines) and
 * the PSRAM (16, 17), so no I2C or SPI bus is offered: the pins left over are
 * the ones hardware/esp32cam.json wires to the button (13), the chime (14) and
 * the red status LED (33, active low); GPIO 4 drives the white flash LED.
 * UART0 (TX 1, RX 3) is the console the board is flashed and provisioned over.
 */
import Digital from "embedded:io/digital";
import PWM from "embedded:io/pwm";
import Serial from "embedded:io/serial";

const device = {
	Serial: {
		default: {
			io: Serial,
			port: 0,
			receive: 3,
			transmit: 1
		}
	},
	io: {Digital, PWM, Serial},
	pin: {
		button: 13,
		chime: 14,
		led: 33,
		flash: 4
	}
};

export default device;
