// Server-sent events read with fetch(): EventSource cannot send the bearer token, which travels in a header.
import { ApiError, messageFromBody } from './api.js'

const STOP_STATUSES = new Set([401, 403, 404, 409]) // asking again cannot help: wrong token, or nothing to follow

/** Splits a text/event-stream body into {event, data} messages (data lines joined by newlines). */
export function eventParser(onMessage) {
  let buffer = ''
  let event = ''
  let data = []
  return (chunk) => {
    buffer += chunk
    const lines = buffer.split(/\r\n|\r|\n/)
    buffer = lines.pop()
    for (const line of lines) {
      if (line === '') {
        if (data.length) onMessage({ event: event || 'message', data: data.join('\n') })
        event = ''
        data = []
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).replace(/^ /, ''))
      } else if (line.startsWith('event:')) {
        event = line.slice(6).trim()
      }
    }
  }
}

/**
 * Follows `path` until stopped, reconnecting with backoff when the stream ends or breaks.
 * `headers()` is asked on every (re)connect; `onEvent({event, data})`, `onError(ApiError)`; a 401, 403,
 * 404 or 409 ends the following (the error says why).
 */
export function followEvents(path, { headers = () => ({}), onEvent, onError, onOpen } = {}) {
  let stopped = false
  let controller = null
  let delay = 1000

  async function run() {
    while (!stopped) {
      controller = new AbortController()
      try {
        const response = await fetch(path, {
          headers: { Accept: 'text/event-stream', ...headers() },
          cache: 'no-store',
          signal: controller.signal,
        })
        if (!response.ok) {
          const body = await response.text()
          let code = null
          try { code = JSON.parse(body).error || null } catch { /* not JSON */ }
          onError?.(new ApiError(response.status, code, messageFromBody(body, response.status)))
          if (STOP_STATUSES.has(response.status)) return
        } else {
          delay = 1000
          onOpen?.()
          const parse = eventParser((message) => onEvent?.(message))
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
          for (;;) {
            const { value, done } = await reader.read()
            if (done) break
            parse(value)
          }
        }
      } catch {
        if (stopped) return
        onError?.(new ApiError(0, 'network', messageFromBody('', 0)))
      }
      if (stopped) return
      await new Promise((resolve) => setTimeout(resolve, delay))
      delay = Math.min(delay * 2, 30_000)
    }
  }

  run()
  return {
    stop() {
      stopped = true
      controller?.abort()
    },
  }
}
