// tus-js-client with uploadDataDuringCreation: the first chunk goes with the POST, and the 201's Upload-Offset is
// where it goes on (or that the upload is complete). Prints one JSON line per response, then "success" or "error".
//   node creation_with_upload.mjs ENDPOINT FILE NAME SHA256 [CHUNK_SIZE]
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

// tests/js holds the node_modules the tests use
const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'js', 'package.json'))
const { Upload } = require('tus-js-client')

const [endpoint, file, filename, sha256, chunkSize] = process.argv.slice(2)
const print = (fields) => process.stdout.write(`${JSON.stringify(fields)}\n`)
const options = {
  endpoint,
  uploadDataDuringCreation: true,
  retryDelays: [0, 300, 600, 1000],
  metadata: { filename, sha256 },
  onAfterResponse(req, res) {
    print({ event: 'response', method: req.getMethod(), status: res.getStatus(), offset: res.getHeader('Upload-Offset') })
  },
  onError(err) {
    print({ event: 'error', message: String(err.message) })
    process.exit(1)
  },
  onSuccess() {
    print({ event: 'success', url: upload.url })
    process.exit(0)
  },
}
if (chunkSize) options.chunkSize = Number(chunkSize)
const upload = new Upload(fs.createReadStream(file), options)
upload.start()
