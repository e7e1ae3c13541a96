// The <script> bundle: window.mdsync is the SDK (dist/mdsync.min.js).
import * as sdk from "./index.js";

(globalThis as unknown as { mdsync: typeof sdk }).mdsync = sdk;
