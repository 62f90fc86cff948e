// Entry point: read the server's config, then start the token dialog, the uploader and the models list.
import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'
import './styles.css'
import { createAuth } from './auth.js'
import { api } from './lib/api.js'
import { $, fillIcons, setText, show } from './lib/dom.js'
import { initModels } from './models.js'
import { initUploads } from './uploads.js'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** GET /api/config, retrying with a visible banner while the server is unreachable. */
async function loadConfig() {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const config = await api('/api/config', { quiet401: true })
      show($('#server-error'), false)
      return config
    } catch (err) {
      setText($('#server-error-text'), `Cannot reach the modeldrop server: ${err.message} Retrying…`)
      show($('#server-error'), true)
      await sleep(Math.min(10_000, 1000 * 2 ** attempt))
    }
  }
}

async function boot() {
  fillIcons()
  const config = await loadConfig()
  setText($('#version'), config.version ? `v${config.version}` : '')
  document.body.dataset.ready = 'true'
  show($('#dropzone-loading'), false)

  const auth = createAuth(config)
  const models = initModels()
  initUploads({ config, auth, onInstalled: () => models.load() })
  auth.onChange(() => models.load())
  if (auth.ready()) models.load()
  else setText($('#models-loading'), 'The list appears once the access token is entered.')
}

boot()
