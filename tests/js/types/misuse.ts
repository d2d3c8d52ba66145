// What megaphone.d.ts must refuse: each line below is an error `tsc` reports, and the test
// checks that it reports each of them (so the declarations are not too loose to catch anything).
import { Megaphone, closeAction } from "megaphone-client";

const mp = new Megaphone("/ws/connect/", { minDelay: "fast" }); // misuse: minDelay
mp.publish("news", () => 1); // misuse: data
mp.subscribe("news", { onMesage: () => {} }); // misuse: onMesage
const action: "retry" = closeAction(1000); // misuse: action
console.log(action);
